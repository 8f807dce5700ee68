#!/usr/bin/env bash
# Creates .venv with torch 2.13.0 (the CPU build this machine serves) installed first, then trainlab and its dev
# extras under a constraint that keeps that torch. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  .venv/bin/python -m pip install -q -c scripts/constraints.txt "torch==2.13.0"
fi
if ! .venv/bin/python -c 'import trainlab, pytest' 2>/dev/null || [ pyproject.toml -nt .venv/.trainlab-installed ]; then
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[dev]"
  touch .venv/.trainlab-installed
fi
.venv/bin/python - <<'PY'
import torch, sys
if not torch.__version__.startswith("2.13.0"):
    sys.exit(f"setup: expected torch 2.13.0, found {torch.__version__}")
print(f"setup: torch {torch.__version__}, trainlab ready in .venv", file=sys.stderr)
PY
