#!/usr/bin/env bash
# Build the Binder environment the way repo2docker does (binder/requirements.txt, then
# binder/postBuild from the repo root) in a fresh venv outside the repo, then check it:
# the pins agree with requirements.txt, `pip check` passes, torch is the CPU build, and
# book/01_architecture.ipynb runs top to bottom on a kernel of that venv. The notebook is
# executed in memory only: book/*.ipynb is never written. The venv is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kaol-binder.XXXXXX")"
step="start"
# On any exit: remove the venv, and on failure say which step failed.
trap 'rc=$?; rm -rf "$tmp"; [ "$rc" -eq 0 ] || echo "check_binder: FAILED at step: $step" >&2' EXIT

say() { step="$1"; echo "check_binder [${SECONDS}s]: $step"; }

say "binder/requirements.txt pins the same versions as requirements.txt"
python3 - <<'EOF'
import re
import sys

def pins(path: str) -> dict[str, str]:
    """{normalized name: version} of the `name==version` lines of a requirements file."""
    out = {}
    for line in open(path):
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==")
            out[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return out

main, binder = pins("requirements.txt"), pins("binder/requirements.txt")
bad = [f"{name}=={v} in binder/requirements.txt, {main.get(name, 'not pinned')} in requirements.txt"
       for name, v in binder.items() if main.get(name) != v]
if bad:
    sys.exit("pin mismatch:\n  " + "\n  ".join(bad))
EOF

# Binder's interpreter is the one binder/runtime.txt names (python-3.11 -> python3.11).
python="python$(sed 's/^python-//' binder/runtime.txt | tr -d '[:space:]')"
say "fresh venv with $python in $tmp/venv"
"$python" -m venv "$tmp/venv"
# Activating puts the venv's pip first on PATH, as postBuild calls plain `pip`; this shell
# is a child of the caller, so the caller's own venv is untouched.
. "$tmp/venv/bin/activate"

# repo2docker reaches the PyTorch CPU index that binder/requirements.txt adds. Where it cannot
# be reached (CI has only the package registries), pip would retry it for every package
# (about 7 s each, 24 minutes in all here): install without that line then; the CPU-build
# check below still proves which torch came in.
reqs="binder/requirements.txt"
index="$(sed -n 's/^--extra-index-url[ =]*//p' "$reqs")"
if [ -n "$index" ] && ! python - "$index" <<'EOF'
import sys
import urllib.error
import urllib.request

try:
    urllib.request.urlopen(sys.argv[1], timeout=10)
except urllib.error.HTTPError:
    pass                                  # the server answered: reachable
except OSError:
    sys.exit(1)
EOF
then
    echo "check_binder: $index cannot be reached: installing without --extra-index-url"
    grep -v '^--extra-index-url' "$reqs" > "$tmp/requirements.txt"
    reqs="$tmp/requirements.txt"
fi

say "pip install -r binder/requirements.txt"
pip install -q -r "$reqs"

say "binder/postBuild"
binder/postBuild

# requirements-nodeps.txt's packages are installed without their declared dependencies on
# purpose (see README): `pip check` reports those, and only those may be missing.
say "pip check (except the declared dependencies of requirements-nodeps.txt)"
nodeps="$(sed -n 's/^\([A-Za-z0-9._-]*\)==.*/\1/p' requirements-nodeps.txt | paste -sd'|')"
broken="$(pip check 2>&1 | grep -viE "^(${nodeps}) |^No broken requirements" || true)"
[ -z "$broken" ] || { echo "$broken"; exit 1; }

say "kaol imports from this clone, torch is the CPU build"
python - <<'EOF'
import os
import torch
import kaol

print(f"  torch {torch.__version__} (CUDA {torch.version.cuda}), kaol from {os.path.dirname(kaol.__file__)}")
assert torch.version.cuda is None, "torch is a CUDA build, Binder should get the CPU wheel"
assert os.path.samefile(os.path.dirname(kaol.__file__), "kaol"), "kaol is not this clone's (editable install)"
EOF

say "book/01_architecture.ipynb runs on the venv's kernel"
# The kernel spec goes into the venv's own prefix; JUPYTER_PATH puts that prefix first, so
# no kernel of the same name elsewhere on the machine is picked. A fresh kaol cache, as on
# Binder.
python -m ipykernel install --sys-prefix --name kaol-binder --display-name "kaol (Binder check)" >/dev/null
export JUPYTER_PATH="$tmp/venv/share/jupyter" KAOL_CACHE="$tmp/kaol_cache"
python - <<'EOF'
import nbformat
from nbclient import NotebookClient

nb = nbformat.read("book/01_architecture.ipynb", as_version=4)
NotebookClient(nb, kernel_name="kaol-binder", timeout=1200,
               resources={"metadata": {"path": "book"}}).execute()
EOF

step="done"
echo "check_binder: passed"
