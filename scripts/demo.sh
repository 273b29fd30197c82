#!/usr/bin/env bash
# Install AEVis with its demo model and photos, run the demo, then serve it in TensorBoard.
# Usage: ./scripts/demo.sh [extra 'aevis demo' args]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q '.[demo]'
.venv/bin/aevis demo --logdir runs/demo "$@"
exec .venv/bin/tensorboard --logdir runs/
