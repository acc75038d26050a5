#!/usr/bin/env bash
# `npm run soak` (after scripts/setup.sh --test): the long runs of the reliability
# scenarios against local-ebs processes on 127.0.0.1. Settings are
# environment variables: npm run soak -- --help
set -euo pipefail
cd "$(dirname "$0")/../.."
exec node --require tsx/cjs test/soak/main.ts "$@"
