#!/usr/bin/env bash
# Set up everything on a fresh machine and run every check: lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest "$@"
