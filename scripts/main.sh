#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the main job: every study at the quick budget (>= 10 seeds per arm),
# as many studies at once as there are cores (at most the 14 studies), each in its own one-thread process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cores=$(nproc 2>/dev/null || echo 1)
exec .venv/bin/trainlab study all --quick --workers $(( cores < 14 ? cores : 14 )) "$@"
