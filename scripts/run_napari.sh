#!/usr/bin/env bash
# One command: install (first time) and open napari with the 3D sample brain MRI,
# the sample model's prediction, an example RoI and the Explain + Agg2Exp docks.
#   bash scripts/run_napari.sh [2d]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/napari" ] && "$VENV/bin/python" -c "import seg_explain" 2>/dev/null \
  || bash scripts/install.sh "$VENV" napari
SAMPLE="brain${1:-3d}"
exec "$VENV/bin/python" -m seg_explain._napari.launch "$SAMPLE"
