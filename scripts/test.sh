#!/usr/bin/env bash
# The README's test command: install into .venv, build the HTML book, then run every test,
# in two jobs at a time, one per core, each single-threaded (results do not depend on the
# thread count: tests/test_determinism.py):
# job 1: the unit tests of kaol (tests/, native CPU, --slow: all of them), then every notebook of book/
#    re-executed by nbval and its outputs compared with the committed ones, as another
#    machine would compute them: numba compiling for a generic x86-64 CPU and torch's
#    kernels at their default capability, with fresh numba and kaol caches (the notebooks
#    were executed on this project's machine, with its native settings, so this one pass
#    checks both that the book reproduces and that it does not depend on the CPU);
# job 2: the book on fresh seeds: every seed shifted by KAOL_SEED_OFFSET=1000, outputs not
#    compared (--nbval-lax), every claim's assert must pass; then node --test tests/js/
#    (web/kaol.js, the model the live figures train in the reader's browser, against kaol's
#    fixtures) and scripts/check_binder.sh (the Binder environment built in a throwaway venv);
# last: tests/browser, the built book opened page by page in headless Chromium (skipped when
#    no Chromium is installed: as root this script installs Debian's chromium first).
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
export NUMBA_NUM_THREADS=1
jupyter-book build . -W -n --keep-going

scratch="$(mktemp -d "${TMPDIR:-/tmp}/kaol-passes.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/numba" "$scratch/cache-cpu" "$scratch/cache-seeds"
status=0
# run NAME COMMAND...: run in the background, output to $scratch/NAME.log
run() { local name=$1; shift; "$@" >"$scratch/$name.log" 2>&1 & pids[$name]=$!; started[$name]=$SECONDS; }
# finish NAME: wait for it, print its log, record a failure (pytest's 5, no tests, is none)
finish() {
    local rc=0
    wait "${pids[$1]}" || rc=$?
    echo "== $1 (exit code $rc, $((SECONDS - started[$1])) s)"; cat "$scratch/$1.log"
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=1; fi
}
declare -A pids started
run unit-then-book-another-cpu bash -c '
    pytest tests --ignore=tests/browser --slow --durations=10; unit=$?
    NUMBA_CPU_NAME=generic ATEN_CPU_CAPABILITY=default NUMBA_CACHE_DIR="$0/numba" \
        KAOL_CACHE="$0/cache-cpu" pytest -p no:cacheprovider --durations=10 book; book=$?
    exit $(( unit || book ))' "$scratch"
run fresh-seeds-node-binder bash -c '
    KAOL_SEED_OFFSET=1000 KAOL_CACHE="$0/cache-seeds" pytest -p no:cacheprovider --durations=10 --nbval-lax book
    seeds=$?; node --test tests/js/; node=$?; bash scripts/check_binder.sh; binder=$?
    exit $(( seeds || node || binder ))' "$scratch"
finish unit-then-book-another-cpu
finish fresh-seeds-node-binder
pytest -p no:cacheprovider tests/browser || { rc=$?; [ "$rc" -eq 5 ] || status=1; }
exit "$status"
