#!/usr/bin/env bash
# The README's test command: install into .venv, build the HTML book, then run every test:
# the unit tests of kaol, every notebook re-executed by nbval, and the built book opened
# page by page in headless Chromium (tests/browser; skipped when no Chromium is installed:
# as root this script installs Debian's chromium first), the JavaScript model of the live
# figures against kaol (node --test tests/js/); last, scripts/check_binder.sh.
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
# web/kaol.js, the model the live figures train in the reader's browser, against kaol's fixtures.
node --test tests/js/ || status=1
# The Binder environment, built in a throwaway venv outside the clone; .venv is not touched.
bash scripts/check_binder.sh || status=1
exit "$status"
