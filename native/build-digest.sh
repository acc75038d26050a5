#!/bin/sh
# Builds native/build/sha256-binding.node, SHA-256 of a block on the libuv pool
# without a copy (native/digest/sha256-binding.c), which the mount's uploads use.
# It runs on `npm install` of the package and from scripts/setup.sh. It never
# fails the install: without it the mount hashes each block on the event loop.
#   DIGEST_STRICT=1   for development (scripts/setup.sh): build even when up to
#                     date, with -Werror, and fail when the build fails
strict="${DIGEST_STRICT:-0}"
without="the mount will hash each block on the event loop"
cd "$(dirname "$0")" || exit 0
. ./addon.sh
out=build/sha256-binding.node
up_to_date "$out" digest/sha256-binding.c && exit 0
find_node_include
[ -f "$node_include/openssl/sha.h" ] || why_not "no OpenSSL headers beside Node's ($node_include/openssl/sha.h) to build $out"
build_addon "$out" digest/sha256-binding.c
exit 0
