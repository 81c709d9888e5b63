#!/usr/bin/env bash
# The README's test command: install into .venv, then run every test in three jobs side by side
# on the machine's cores, each single-threaded (results do not depend on the thread count:
# tests/test_determinism.py). The two book passes take most of the time; the third job's
# smaller parts fill the cores around them, so no core waits:
# job 1: every notebook of book/ re-executed by nbval and its outputs compared with the
#    committed ones, as another machine would compute them: numba compiling for a generic
#    x86-64 CPU and torch's kernels at their default capability, with fresh numba and kaol
#    caches (the notebooks were executed on this project's machine, with its native settings,
#    so this one pass checks both that the book reproduces and that it does not depend on the
#    CPU); then the unit tests of kaol (tests/, native CPU, --slow: all of them);
# job 2: the book on fresh seeds: every seed shifted by KAOL_SEED_OFFSET=1000, outputs not
#    compared (--nbval-lax), every claim's assert must pass; then node --test tests/js/
#    (web/kaol.js, the model the live figures train in the reader's browser, against kaol's
#    fixtures);
# job 3: the HTML book built with -W (warnings are errors), then tests/browser (the built book
#    opened page by page in headless Chromium; skipped when no Chromium is installed: as root
#    this script installs Debian's chromium first), then scripts/check_binder.sh (the Binder
#    environment built in a throwaway venv, chapter 1 run in it).
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
# exit code of a job's parts: pytest's 5 (no tests collected: tests/browser without Chromium) is no failure
worst='r=0; for c in "$@"; do [ "$c" -eq 0 ] || [ "$c" -eq 5 ] || r=1; done; exit $r'
declare -A pids started
run book-another-cpu-then-unit bash -c '
    NUMBA_CPU_NAME=generic ATEN_CPU_CAPABILITY=default NUMBA_CACHE_DIR="$0/numba" \
        KAOL_CACHE="$0/cache-cpu" pytest -p no:cacheprovider --durations=10 book; book=$?
    pytest tests --ignore=tests/browser --slow --durations=10; unit=$?
    bash -c "$1" - $book $unit' "$scratch" "$worst"
run fresh-seeds-then-node bash -c '
    KAOL_SEED_OFFSET=1000 KAOL_CACHE="$0/cache-seeds" pytest -p no:cacheprovider --durations=10 --nbval-lax book
    seeds=$?; node --test tests/js/; node=$?
    bash -c "$1" - $seeds $node' "$scratch" "$worst"
run build-browser-binder bash -c '
    jupyter-book build . -W -n --keep-going; build=$?
    browser=1; [ "$build" -ne 0 ] || { pytest -p no:cacheprovider tests/browser; browser=$?; }
    bash scripts/check_binder.sh; binder=$?
    bash -c "$1" - $build $browser $binder' "$worst"
finish build-browser-binder
finish fresh-seeds-then-node
finish book-another-cpu-then-unit
exit "$status"
