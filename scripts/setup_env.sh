#!/usr/bin/env bash
# Creates .venv (if missing) and installs the pinned requirements into it.
# Sourced by the other scripts; safe to run again (pip skips what is there).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha"
want="$(cat "$REPO/requirements.txt" "$REPO/constraints.txt" "$REPO/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r "$REPO/requirements.txt" -c "$REPO/constraints.txt"
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$REPO"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
