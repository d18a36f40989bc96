#!/usr/bin/env bash
# One command: set up a fresh environment and run the whole test suite headless.
#   bash scripts/run_tests.sh            (venv in .venv-test; pytest args may follow)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-test}"
INSTALL_FROM_WHEEL="${INSTALL_FROM_WHEEL:-1}" bash scripts/install.sh "$VENV" test
export QT_QPA_PLATFORM=offscreen NAPARI_ENSURE_PLUGIN_MAIN_THREAD=1 MPLBACKEND=Agg
"$VENV/bin/npe2" validate napari-seg-explain
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
