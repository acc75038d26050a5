#!/bin/sh
# Builds native/build/sha256-binding.node, SHA-256 of a block on the libuv pool
# without a copy (native/digest/sha256-binding.c), which the mount's uploads use.
# It runs on `npm install` of the package and from scripts/setup.sh. It never
# fails the install: without it the mount hashes each block on the event loop.
#   DIGEST_STRICT=1   for development (scripts/setup.sh): build even when up to
#                     date, with -Werror, and fail when the build fails
strict="${DIGEST_STRICT:-0}"
cd "$(dirname "$0")" || exit 0
out=build/sha256-binding.node
if [ "$strict" != 1 ] && [ -f "$out" ] && [ ! digest/sha256-binding.c -nt "$out" ]; then exit 0; fi
why_not() {
  echo "ebs-fuse: $1; the mount will hash each block on the event loop" >&2
  [ "$strict" = 1 ] && exit 1
  exit 0
}
compiler=$(command -v cc || command -v gcc) || why_not "no C compiler (cc or gcc) to build $out (apt-get install gcc)"
. ./node-include.sh
[ -n "$node_include" ] && [ -f "$node_include/openssl/sha.h" ] || why_not "no Node headers with OpenSSL's (node_api.h, openssl/sha.h) to build $out"
flags=""
[ "$strict" = 1 ] && flags="-Werror"
mkdir -p build || exit 0
# Built under a temporary name so a concurrent run never loads half a library.
# shellcheck disable=SC2086
if "$compiler" -O2 -Wall -Wextra $flags -fPIC -shared -I"$node_include" -o "$out.tmp.$$" digest/sha256-binding.c; then
  mv -f "$out.tmp.$$" "$out"
else
  rm -f "$out.tmp.$$"
  why_not "building $out failed"
fi
exit 0
