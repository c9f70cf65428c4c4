#!/usr/bin/env bash
# Set up everything on a fresh machine and run `callbridge demo` (arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh local
exec .venv/bin/callbridge demo "$@"
