#!/bin/sh
# Builds native/build/extents, the SEEK_DATA/SEEK_HOLE helper of `ebs-fuse upload`
# (Node's fs has no lseek), when a C compiler is there. It runs on `npm install`
# of the package and from scripts/setup.sh. It never fails the install: without
# the helper, upload reads holes as data and says so in one line.
#   EXTENTS_CFLAGS   extra compiler flags (setup.sh adds -Werror)
cd "$(dirname "$0")" || exit 0
if [ -x build/extents ] && [ ! extents/extents.c -nt build/extents ]; then exit 0; fi
compiler=$(command -v cc || command -v gcc) || {
  echo "ebs-fuse: no C compiler (cc or gcc) to build native/build/extents; upload will read holes as data (apt-get install gcc, then run $(pwd)/build-extents.sh)" >&2
  exit 0
}
mkdir -p build || exit 0
# Built under a temporary name so a concurrent run never sees half a binary.
# shellcheck disable=SC2086
if "$compiler" -O2 -Wall -Wextra ${EXTENTS_CFLAGS:-} -o "build/extents.tmp.$$" extents/extents.c; then
  mv -f "build/extents.tmp.$$" build/extents
else
  rm -f "build/extents.tmp.$$"
  echo "ebs-fuse: building native/build/extents failed; upload will read holes as data" >&2
fi
exit 0
