#!/usr/bin/env bash
# The README's test command: install into .venv, then run every check as one task of a list,
# as many at a time as the machine has cores, longest first (so no core idles while one long
# task finishes). Each task is single-threaded: results do not depend on the thread count
# (tests/test_determinism.py). The tasks:
# another-cpu NOTEBOOK: the notebook re-executed by nbval and its outputs compared with the
#    committed ones, as another machine would compute them: numba compiling for a generic
#    x86-64 CPU and torch's kernels at their default capability, with fresh numba and kaol
#    caches (shared by these tasks). The notebooks were executed on this project's machine with
#    its native settings, so this checks both that the book reproduces and that it does not
#    depend on the CPU;
# fresh-seeds NOTEBOOK: the notebook on fresh seeds: every seed shifted by KAOL_SEED_OFFSET=1000,
#    outputs not compared (--nbval-lax), every claim's assert must pass;
# unit: the unit tests of kaol (tests/, native CPU, --slow: all of them);
# node: node --test tests/js/ (web/kaol.js, the model the live figures train in the reader's
#    browser, against kaol's fixtures);
# build-browser: the HTML book built with -W (warnings are errors), then tests/browser (the
#    built book opened page by page in headless Chromium; skipped when no Chromium is installed:
#    as root this script installs Debian's chromium first);
# binder: scripts/check_binder.sh (the Binder environment built in a throwaway venv, chapter 1
#    run in it).
# Every task's log is printed at the end, with its exit code and time.
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
scratch="$(mktemp -d "${TMPDIR:-/tmp}/kaol-tasks.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/numba" "$scratch/cache-cpu" "$scratch/cache-seeds" "$scratch/logs"
export scratch

# task NAME [NOTEBOOK]: one check (see above); pytest's exit code 5 (no tests collected:
# tests/browser without Chromium) counts as a pass
task() {
    local rc=0
    case "$1" in
        another-cpu) NUMBA_CPU_NAME=generic ATEN_CPU_CAPABILITY=default NUMBA_CACHE_DIR="$scratch/numba" \
            KAOL_CACHE="$scratch/cache-cpu" pytest -p no:cacheprovider --durations=5 "book/$2" || rc=$? ;;
        fresh-seeds) KAOL_SEED_OFFSET=1000 KAOL_CACHE="$scratch/cache-seeds" \
            pytest -p no:cacheprovider --durations=5 --nbval-lax "book/$2" || rc=$? ;;
        unit) pytest tests --ignore=tests/browser --slow --durations=10 || rc=$? ;;
        node) node --test tests/js/ || rc=$? ;;
        build-browser) jupyter-book build . -W -n --keep-going || rc=$?
            [ "$rc" -ne 0 ] || pytest -p no:cacheprovider tests/browser || rc=$? ;;
        binder) bash scripts/check_binder.sh || rc=$? ;;
        *) echo "unknown task $1"; rc=1 ;;
    esac
    [ "$rc" -ne 5 ] || rc=0
    return "$rc"
}
# run_task NAME [NOTEBOOK]: task with its output in logs/, then its exit code and seconds
run_task() {
    local log="$scratch/logs/${1}${2:+-$2}" start=$SECONDS rc=0
    task "$@" >"$log.log" 2>&1 || rc=$?
    echo "$rc $((SECONDS - start))" >"$log.rc"
}
export -f task run_task

# Longest first, by the seconds each took in a clean-clone run on 2 cores (2026-12-02, 1155 s
# in all: install 85, tasks 2141 on two cores).
tasks=(
    "another-cpu 06_experiments.ipynb"      # 692
    "fresh-seeds 06_experiments.ipynb"      # 419
    "another-cpu 08_popqa.ipynb"            # 239
    "fresh-seeds 08_popqa.ipynb"            # 208
    "another-cpu 03_pretraining.ipynb"      # 128
    "binder"                                # 81
    "build-browser"                         # 60
    "unit"                                  # 53
    "fresh-seeds 03_pretraining.ipynb"      # 50
    "another-cpu 07_gpt2_synthetic.ipynb"   # 47
    "fresh-seeds 07_gpt2_synthetic.ipynb"   # 40
    "another-cpu 05_low_rank.ipynb"         # 29
    "another-cpu 04_finetuning.ipynb"       # 28
    "fresh-seeds 05_low_rank.ipynb"         # 23
    "fresh-seeds 04_finetuning.ipynb"       # 19
    "another-cpu 01_architecture.ipynb"     # 7
    "another-cpu 02_data.ipynb"             # 7
    "fresh-seeds 01_architecture.ipynb"     # 6
    "fresh-seeds 02_data.ipynb"             # 4
    "node"                                  # 1
)
# A notebook not in the list (not yet timed) runs first, in both passes.
for nb in book/*.ipynb; do
    [[ " ${tasks[*]} " == *" ${nb#book/} "* ]] || tasks=("another-cpu ${nb#book/}" "fresh-seeds ${nb#book/}" "${tasks[@]}")
done
printf '%s\n' "${tasks[@]}" | xargs -P "$(nproc)" -L 1 bash -c 'run_task "$@"' -
status=0 summary=""
for t in "${tasks[@]}"; do
    log="$scratch/logs/${t// /-}"
    read -r rc secs <"$log.rc" 2>/dev/null || { rc=1; secs="?"; }
    echo "== $t (exit code $rc, $secs s)"; cat "$log.log"
    summary+="$t: exit code $rc, $secs s"$'\n'
    [ "$rc" -eq 0 ] || status=1
done
echo "== summary: $SECONDS s in all"
printf '%s' "$summary"
exit "$status"
