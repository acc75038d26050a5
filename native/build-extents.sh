#!/bin/sh
# Builds native/build/extents, the SEEK_DATA/SEEK_HOLE helper of `ebs-fuse upload`
# (Node's fs has no lseek), when a C compiler is there. It runs on `npm install`
# of the package and from scripts/setup.sh. It never fails the install: without
# the helper, upload reads holes as data and says so in one line.
#   EXTENTS_STRICT=1   for development (scripts/setup.sh): build even when up to
#                      date, with -Werror, and fail when the build fails
strict="${EXTENTS_STRICT:-0}"
cd "$(dirname "$0")" || exit 0
if [ "$strict" != 1 ] && [ -x build/extents ] && [ ! extents/extents.c -nt build/extents ]; then exit 0; fi
flags=""
[ "$strict" = 1 ] && flags="-Werror"
compiler=$(command -v cc || command -v gcc) || {
  echo "ebs-fuse: no C compiler (cc or gcc) to build native/build/extents; upload will read holes as data (apt-get install gcc, then run $(pwd)/build-extents.sh)" >&2
  exit 0
}
mkdir -p build || exit 0
# Built under a temporary name so a concurrent run never sees half a binary.
# shellcheck disable=SC2086
if "$compiler" -O2 -Wall -Wextra $flags -o "build/extents.tmp.$$" extents/extents.c; then
  mv -f "build/extents.tmp.$$" build/extents
else
  rm -f "build/extents.tmp.$$"
  echo "ebs-fuse: building native/build/extents failed; upload will read holes as data" >&2
  [ "$strict" = 1 ] && exit 1
fi
exit 0
