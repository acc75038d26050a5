#!/usr/bin/env bash
# `npm start`: set the machine up, then mount a 100 GiB snapshot at ./mnt backed by
# the embedded local-ebs (data in ./.ebs-local). Ctrl-C unmounts and completes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p mnt
exec node dist/cli.js mount ./mnt --size "${EBS_FUSE_SIZE_GIB:-100}" --local "$@"
