#!/usr/bin/env bash
# Set up everything on a fresh machine and run every check: lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# The captions page is tested in a real headless browser: Debian's chromium and its driver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
        echo "test: installing chromium and chromium-driver for the browser tests" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver \
            >/dev/null
    else
        echo "test: the browser tests need chromium and chromedriver on PATH" >&2
    fi
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest "$@"
