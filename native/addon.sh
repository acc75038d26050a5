# Sourced, from native/, by the scripts that build the N-API addons
# (build-fuse3.sh, build-digest.sh). The caller sets `strict` (1 for development:
# build even when up to date, with -Werror, and fail when the build fails) and
# `without` (what the product does without the addon, for the one-line warning).

why_not() {
  echo "ebs-fuse: $1; $without" >&2
  [ "$strict" = 1 ] && exit 1
  exit 0
}

# up_to_date OUT SRC: OUT is newer than SRC, and the build is not strict.
up_to_date() {
  [ "$strict" != 1 ] && [ -f "$1" ] && [ ! "$2" -nt "$1" ]
}

# Sets node_include to Node's own headers (node_api.h, and the OpenSSL headers of
# the running node): beside the running node, or where Debian's nodejs puts them.
find_node_include() {
  node_prefix=$(dirname "$(dirname "$(command -v node)")")
  node_include=""
  for dir in "$node_prefix/include/node" /usr/include/node; do
    [ -f "$dir/node_api.h" ] && { node_include="$dir"; break; }
  done
  [ -n "$node_include" ] || why_not "no node_api.h (Node's headers) to build $out"
}

# build_addon OUT SRC [LINK FLAGS...]: compiles SRC against Node's headers into OUT.
build_addon() {
  out=$1
  src=$2
  shift 2
  compiler=$(command -v cc || command -v gcc) || why_not "no C compiler (cc or gcc) to build $out (apt-get install gcc)"
  [ -n "$node_include" ] || find_node_include
  flags=""
  [ "$strict" = 1 ] && flags="-Werror"
  mkdir -p build || exit 0
  # Built under a temporary name so a concurrent run never loads half a library.
  # shellcheck disable=SC2086
  if "$compiler" -O2 -Wall -Wextra $flags -fPIC -shared -I"$node_include" -o "$out.tmp.$$" "$src" "$@"; then
    mv -f "$out.tmp.$$" "$out"
  else
    rm -f "$out.tmp.$$"
    why_not "building $out failed"
  fi
}
