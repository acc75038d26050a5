#!/usr/bin/env bash
# Brings a fresh Debian machine (Node 20, root) to the point where ebs-fuse runs:
# system packages that are missing, node_modules, the extents helper and the build.
# Idempotent and quiet when everything is already there, so `npm start` and
# `npm test` can call it every time.
#   scripts/setup.sh          what `ebs-fuse mount` needs
#   scripts/setup.sh --test   also what the test suite drives (mkfs, fio, awscli, boto3)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*" >&2; }

want_test_tools=0
[ "${1:-}" = "--test" ] && want_test_tools=1

# name-of-debian-package:probe ; the probe is a command or an absolute file path.
runtime_packages=(
  "libfuse2:/usr/lib/x86_64-linux-gnu/libfuse.so.2"
  "fuse3:fusermount"
  "e2fsprogs:mkfs.ext4"
  "util-linux:losetup"
  # native/build/fuse3-binding.node, the libfuse 3 path of the mount
  "libfuse3-dev:/usr/include/fuse3/fuse.h"
  "gcc:gcc"
  "pkg-config:pkg-config"
)
test_packages=(
  "fio:fio"
  "awscli:/usr/bin/aws"
  "python3-boto3:/usr/lib/python3/dist-packages/boto3/__init__.py"
  "libfuse-dev:/usr/include/fuse/fuse.h"
  "qemu-utils:qemu-img"
)

probe_ok() {
  case "$1" in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# libfuse2 lives under the multiarch directory of the machine's architecture.
arch_dir="/usr/lib/$(uname -m)-linux-gnu"
missing=()
check_list() {
  local entry pkg probe
  for entry in "$@"; do
    pkg="${entry%%:*}"
    probe="${entry#*:}"
    probe="${probe//\/usr\/lib\/x86_64-linux-gnu/$arch_dir}"
    probe_ok "$probe" || missing+=("$pkg")
  done
}
check_list "${runtime_packages[@]}"
[ "$want_test_tools" = 1 ] && check_list "${test_packages[@]}"

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing system packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}"
    exit 1
  fi
  log "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel side: FUSE and loop devices are modules on some kernels.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || { log "/dev/fuse is missing and 'modprobe fuse' did not create it"; exit 1; }

# node_modules: reinstall when absent or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing node_modules (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

# native/build/extents: SEEK_DATA/SEEK_HOLE for `ebs-fuse upload` (also built on npm install).
EXTENTS_STRICT=1 sh native/build-extents.sh
# native/build/fuse3-binding.node: the mount's libfuse 3 path (also built on npm install).
FUSE3_STRICT=1 sh native/build-fuse3.sh
# native/build/sha256-binding.node: the uploads' SHA-256 off the event loop (also built on npm install).
DIGEST_STRICT=1 sh native/build-digest.sh

log "building"
npx --no-install tsc -p tsconfig.json
