#!/bin/sh
# Builds native/build/fuse3-binding.node, the libfuse 3 path of the mount (1 MiB
# writes, writes queued on the FUSE thread; see native/fuse3/fuse3-binding.c).
# It runs on `npm install` of the package and from scripts/setup.sh. It never
# fails the install: without the addon the mount goes through fuse-native and
# libfuse 2.9, and `ebs-fuse --version` says which one it uses.
#   FUSE3_STRICT=1   for development (scripts/setup.sh): build even when up to
#                    date, with -Werror, and fail when the build fails
strict="${FUSE3_STRICT:-0}"
without="the mount will use fuse-native and libfuse 2.9 (128 KiB writes)"
cd "$(dirname "$0")" || exit 0
. ./addon.sh
out=build/fuse3-binding.node
up_to_date "$out" fuse3/fuse3-binding.c && exit 0
fuse3_flags=$(pkg-config --cflags --libs fuse3 2>/dev/null) || why_not "no libfuse 3 headers to build $out (apt-get install libfuse3-dev pkg-config)"
# shellcheck disable=SC2086
build_addon "$out" fuse3/fuse3-binding.c $fuse3_flags -lpthread
exit 0
