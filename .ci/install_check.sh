#!/usr/bin/env bash
# Issue 22's install check, on a copy of the repository's committed files: `pip install .` in a fresh venv installs
# the core without brax (and a `brax/` id then fails with one line naming the extra, before anything runs);
# `pip install '.[brax]'` adds brax and a brax env builds without mujoco's "Failed to import warp" noise.
# Pinned by constraints.txt, as the Makefile installs. Usage: .ci/install_check.sh [PYTHON] (default python3).
set -euo pipefail
PYTHON=${1:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src" && git -C "$root" archive HEAD | tar -x -C "$work/src"  # what a clone holds, no build leftovers
"$PYTHON" -m venv "$work/venv"
pip="$work/venv/bin/python -m pip"
cd "$work/src"
$pip install -q -c constraints.txt .
if $pip show brax mujoco >/dev/null 2>&1; then echo "FAIL: pip install . brought brax or mujoco"; exit 1; fi
cd "$work"
"$work/venv/bin/jaxmod" --version
"$work/venv/bin/jaxmod" train --env brax/hopper --help >/dev/null  # the help needs no brax (presets are jaxmod's)
set +e
"$work/venv/bin/jaxmod" train --env brax/hopper --out "$work/run" 2>"$work/err.txt"
code=$?
set -e
cat "$work/err.txt"
[ "$code" -eq 2 ] || { echo "FAIL: a brax/ id without brax exited $code, not 2"; exit 1; }
[ "$(wc -l <"$work/err.txt")" -eq 1 ] && grep -q "brax envs need the brax extra" "$work/err.txt" \
    || { echo "FAIL: not one line naming the brax extra"; exit 1; }
[ ! -e "$work/run" ] || { echo "FAIL: the refused run wrote $work/run"; exit 1; }
cd "$work/src"
$pip install -q -c constraints.txt '.[brax]'
$pip show brax | sed -n 1,2p  # sed reads it all: head would break pip's pipe (pipefail)
cd "$work"
out=$("$work/venv/bin/python" -c "from jaxmod.envs import make; print('obs', make('brax/hopper', num_envs=2).obs_shape)" 2>&1)
echo "$out"
grep -q "^obs (11,)$" <<<"$out" || { echo "FAIL: brax/hopper did not build"; exit 1; }
! grep -qi "warp\|deprecat" <<<"$out" || { echo "FAIL: brax's import noise reached the user"; exit 1; }
echo "install check passed"
