# Sourced by the addons' build scripts: sets node_include to the directory of
# Node's own headers (node_api.h, and the OpenSSL headers of the running node),
# beside the running node or where Debian's nodejs puts them; empty if neither.
node_prefix=$(dirname "$(dirname "$(command -v node)")")
node_include=""
for dir in "$node_prefix/include/node" /usr/include/node; do
  [ -f "$dir/node_api.h" ] && { node_include="$dir"; break; }
done
