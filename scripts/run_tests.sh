#!/usr/bin/env bash
# One command: set up a fresh environment and run the whole test suite headless.
#   bash scripts/run_tests.sh            (venv in .venv-test; pytest args may follow)
# The napari tests drive real viewers: on a virtual X screen (Xvfb, software OpenGL) when
# xvfb-run is there, else Qt's offscreen platform (which cannot draw 3D volumes on Qt 6).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-test}"
INSTALL_FROM_WHEEL="${INSTALL_FROM_WHEEL:-1}" bash scripts/install.sh "$VENV" test
export NAPARI_ENSURE_PLUGIN_MAIN_THREAD=1 MPLBACKEND=Agg
"$VENV/bin/npe2" validate napari-seg-explain
"$VENV/bin/ruff" check src tests scripts benchmarks
if command -v xvfb-run >/dev/null 2>&1; then
  export QT_QPA_PLATFORM=xcb
  exec xvfb-run -a -s "-screen 0 1400x900x24" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
fi
export QT_QPA_PLATFORM=offscreen
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
