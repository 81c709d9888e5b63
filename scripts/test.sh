#!/usr/bin/env bash
# The README's test command: install into .venv, build the HTML book, then run every test:
# 1. pytest: the unit tests of kaol, every notebook re-executed by nbval (outputs compared
#    with the committed ones), and the built book opened page by page in headless Chromium
#    (tests/browser; skipped when no Chromium is installed: as root this script installs
#    Debian's chromium first);
# 2. the book as another machine would run it: nbval of book/ again with numba compiling for
#    a generic x86-64 CPU and torch's kernels at their default capability, with fresh numba
#    and kaol caches (the compared outputs must not depend on the CPU);
# 3. the book on fresh seeds: every seed shifted by KAOL_SEED_OFFSET=1000, outputs not
#    compared (--nbval-lax), every claim's assert must still pass;
# 4. node --test tests/js/: web/kaol.js, the model the live figures train in the reader's
#    browser, against kaol's fixtures;
# 5. scripts/check_binder.sh: the Binder environment built in a throwaway venv.
# Passes 2 and 3 run side by side (each notebook kernel uses one thread).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
pip install -q -r requirements.txt -e .
pip install -q --no-deps -r requirements-nodeps.txt
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
        || echo "chromium could not be installed: tests/browser will skip"
fi
# Results cached by configuration (kaol.cache) go to the clone's own folder, so a run starts
# from what the clone holds, not from a cache left elsewhere on the machine.
export KAOL_CACHE="${KAOL_CACHE:-$PWD/.kaol_cache/kaol}"
jupyter-book build . -W -n --keep-going
status=0
pytest || status=$?
# pytest's exit code 5 means "no tests were collected": not a failure of the code.
[ "$status" -eq 5 ] && { echo "pytest collected no tests (exit code 5)"; status=0; }

scratch="$(mktemp -d "${TMPDIR:-/tmp}/kaol-passes.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/numba" "$scratch/cache-cpu" "$scratch/cache-seeds"
echo "== book/ as another CPU would run it (NUMBA_CPU_NAME=generic ATEN_CPU_CAPABILITY=default)"
NUMBA_CPU_NAME=generic ATEN_CPU_CAPABILITY=default NUMBA_CACHE_DIR="$scratch/numba" \
    KAOL_CACHE="$scratch/cache-cpu" pytest -p no:cacheprovider book >"$scratch/cpu.log" 2>&1 &
cpu=$!
echo "== book/ on fresh seeds (KAOL_SEED_OFFSET=1000, asserts only)"
KAOL_SEED_OFFSET=1000 KAOL_CACHE="$scratch/cache-seeds" \
    pytest -p no:cacheprovider --nbval-lax book >"$scratch/seeds.log" 2>&1 &
seeds=$!
wait "$cpu" || { status=1; echo "another-CPU pass FAILED:"; }
cat "$scratch/cpu.log"
wait "$seeds" || { status=1; echo "fresh-seed pass FAILED:"; }
cat "$scratch/seeds.log"

# web/kaol.js, the model the live figures train in the reader's browser, against kaol's fixtures.
node --test tests/js/ || status=1
# The Binder environment, built in a throwaway venv outside the clone; .venv is not touched.
bash scripts/check_binder.sh || status=1
exit "$status"
