#!/usr/bin/env bash
# Set up everything on a fresh machine and run every check: lint, types, then the tests on
# the lowest supported Python (3.11) and, when this machine has it, again on Python 3.13
# (the Docker image's runtime). Arguments go to pytest.
# CALLBRIDGE_TEST_NO_APT=1: install nothing through apt (the browser tests are then skipped
# unless chromium and chromedriver are already on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test: $*" >&2; }

# The lowest supported Python: python3.11 on PATH, else pyenv's, else python3 as it is.
# A Python that really runs: a pyenv shim on PATH may name a version that is not active.
runs() { "$1" -c 'import sys' >/dev/null 2>&1; }

# The first of python<VERSION> on PATH and pyenv's versions that runs; empty if none.
find_python() {
    local candidate
    for candidate in "$(command -v "python$1" 2>/dev/null)" \
            $(ls -d "$HOME"/.pyenv/versions/"$1"*/bin/python 2>/dev/null | sort -rV); do
        if [ -n "$candidate" ] && runs "$candidate"; then echo "$candidate"; return; fi
    done
}

lowest_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    local found
    found=$(find_python 3.11)
    echo "${found:-python3}"
}

python_313() { find_python 3.13; }

# What apt would install for these packages: names, count, download and disk size.
apt_preview() {
    local packages
    packages=$(LC_ALL=C apt-get install -s "$@" 2>/dev/null | awk '/^Inst /{print $2}')
    if [ -z "$packages" ]; then echo "nothing new"; return; fi
    # shellcheck disable=SC2086 # one argument per package name
    apt-cache show --no-all-versions $packages 2>/dev/null | awk -v n="$(echo $packages | wc -w)" \
        -v names="$(echo $packages)" '
        /^Size:/ {download += $2} /^Installed-Size:/ {disk += $2}
        END {printf "%d packages (%s), about %.0f MB to download and %.0f MB on disk\n",
                    n, names, download / 1e6, disk / 1024}'
}

# Why the tests that need these Debian packages cannot run (empty when they can): installs
# them through apt when their programs are missing. Arguments: what needs them, the
# programs (comma-separated), then the packages.
apt_skip_reason() {
    local what=$1 programs=$2
    shift 2
    local program missing=""
    for program in ${programs//,/ }; do
        command -v "$program" >/dev/null 2>&1 || missing=1
    done
    if [ -z "$missing" ]; then return; fi
    local joined="$*"
    local names="${joined// / and }"
    if [ -n "${CALLBRIDGE_TEST_NO_APT:-}" ]; then
        echo "$names are not installed (CALLBRIDGE_TEST_NO_APT is set)"
        return
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; }; then
        echo "$names are not installed, and apt-get as root is not available"
        return
    fi
    $sudo apt-get update -qq >&2 || true
    say "the $what tests need $names; installing through apt:"
    say "  $(apt_preview "$@")"
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null; then
        echo "apt-get could not install $names"
    fi
}

lowest=$(lowest_python)
PYTHON="$lowest" bash scripts/setup.sh dev

# The captions page is tested in a real headless browser: Debian's chromium and its driver.
skip_reason=$(apt_skip_reason browser chromium,chromedriver chromium chromium-driver)
if [ -n "$skip_reason" ]; then
    say "browser tests skipped: $skip_reason"
    export CALLBRIDGE_TEST_SKIP_BROWSER="$skip_reason"
fi

# Cluster mode is tested against a real Redis: Debian's redis-server and redis-sentinel.
redis_reason=$(apt_skip_reason cluster redis-server,redis-sentinel redis-server redis-sentinel)
if [ -n "$redis_reason" ]; then
    say "Redis tests skipped: $redis_reason"
    export CALLBRIDGE_TEST_SKIP_REDIS="$redis_reason"
fi

.venv/bin/ruff check .
.venv/bin/mypy

status=0
say "tests on $(.venv/bin/python --version) (.venv)"
.venv/bin/pytest "$@" || status=$?

py313=$(python_313)
if [ -z "$py313" ]; then
    say "Python 3.13 not found (python3.13 on PATH or ~/.pyenv/versions/3.13*): tests ran on" \
        "$(.venv/bin/python --version) only"
else
    if [ ! -x .venv313/bin/python ]; then "$py313" -m venv .venv313; fi
    # Reinstall only when the dependencies changed since the last install.
    if [ ! -f .venv313/.installed ] || [ pyproject.toml -nt .venv313/.installed ]; then
        .venv313/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
        .venv313/bin/python -m pip install --quiet --disable-pip-version-check \
            -e ".[dev]"  # the extras .venv has: one list, in pyproject.toml
        touch .venv313/.installed
    fi
    say "tests on $(.venv313/bin/python --version) (.venv313)"
    .venv313/bin/pytest "$@" || status=$?
fi
exit "$status"
