#!/usr/bin/env bash
# `npm test`: set the machine up (scripts/setup.sh --test), type-check the tests,
# lint (ESLint) and check the formatting (Prettier), then run the whole mocha
# suite. Extra arguments go to mocha, e.g.
#   npm test -- --grep checksum
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
npx --no-install tsc -p test/tsconfig.json
npx --no-install eslint --max-warnings 0 .
npx --no-install prettier --check --log-level warn .
exec npx --no-install mocha "test/**/*.test.ts" "$@"
