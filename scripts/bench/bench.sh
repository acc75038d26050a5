#!/usr/bin/env bash
# `npm run bench`: set the machine up like `npm test` does (packages, node_modules,
# the fuse-native patch, the build), then run every benchmark of issue 6.
# Settings are environment variables: npm run bench -- --help
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh --test
exec node --require tsx/cjs scripts/bench/main.ts "$@"
