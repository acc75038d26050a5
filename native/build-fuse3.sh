#!/bin/sh
# Builds native/build/fuse3-binding.node, the libfuse 3 path of the mount (1 MiB
# writes, writes queued on the FUSE thread; see native/fuse3/fuse3-binding.c).
# It runs on `npm install` of the package and from scripts/setup.sh. It never
# fails the install: without the addon the mount goes through fuse-native and
# libfuse 2.9, and `ebs-fuse --version` says which one it uses.
#   FUSE3_STRICT=1   for development (scripts/setup.sh): build even when up to
#                    date, with -Werror, and fail when the build fails
strict="${FUSE3_STRICT:-0}"
cd "$(dirname "$0")" || exit 0
out=build/fuse3-binding.node
if [ "$strict" != 1 ] && [ -f "$out" ] && [ ! fuse3/fuse3-binding.c -nt "$out" ]; then exit 0; fi
why_not() {
  echo "ebs-fuse: $1; the mount will use fuse-native and libfuse 2.9 (128 KiB writes)" >&2
  [ "$strict" = 1 ] && exit 1
  exit 0
}
compiler=$(command -v cc || command -v gcc) || why_not "no C compiler (cc or gcc) to build $out (apt-get install gcc)"
fuse3_flags=$(pkg-config --cflags --libs fuse3 2>/dev/null) || why_not "no libfuse 3 headers to build $out (apt-get install libfuse3-dev pkg-config)"
. ./node-include.sh
[ -n "$node_include" ] || why_not "no node_api.h (Node's headers) to build $out"
flags=""
[ "$strict" = 1 ] && flags="-Werror"
mkdir -p build || exit 0
# Built under a temporary name so a concurrent run never loads half a library.
# shellcheck disable=SC2086
if "$compiler" -O2 -Wall -Wextra $flags -fPIC -shared -I"$node_include" -o "$out.tmp.$$" fuse3/fuse3-binding.c $fuse3_flags -lpthread; then
  mv -f "$out.tmp.$$" "$out"
else
  rm -f "$out.tmp.$$"
  why_not "building $out failed"
fi
exit 0
