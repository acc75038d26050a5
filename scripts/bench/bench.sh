#!/usr/bin/env bash
# `npm run bench`: set the machine up like `npm test` does (packages, node_modules,
# the extents helper, the build), then run every benchmark (docs/BENCHMARKS.md).
# Settings are environment variables: npm run bench -- --help
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh --test
exec node --require tsx/cjs scripts/bench/main.ts "$@"
