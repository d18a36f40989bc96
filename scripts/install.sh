#!/usr/bin/env bash
# Create/refresh a virtual environment with napari-seg-explain and its dependencies.
# Usage: bash scripts/install.sh [VENV_DIR] [EXTRAS]   (defaults: .venv, "napari")
# Installs torch first (pinned CPU-capable 2.13.0 unless TORCH_SPEC is set), so that pip does
# not pull a multi-GB CUDA build through a loose `torch` requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
EXTRAS="${2:-napari}"
PY="${PYTHON:-python3}"
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && [ -z "${SKIP_APT:-}" ]; then
  # Qt/OpenGL runtime libraries napari needs (headless included); Xvfb for the GUI
  # responsiveness tests and screenshots (they skip, saying why, where it is missing)
  if ! dpkg -s libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 \
        libxcb-render-util0 libxcb-xinerama0 libfontconfig1 libdbus-1-3 xvfb xauth >/dev/null 2>&1; then
    # another apt/dpkg (unattended-upgrades at boot, a second install) may hold the lock:
    # wait for it (APT_LOCK_TIMEOUT seconds, default 600) instead of failing at once
    APT=(apt-get -o "DPkg::Lock::Timeout=${APT_LOCK_TIMEOUT:-600}")
    "${APT[@]}" update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq \
      libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 \
      libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libxcb-xfixes0 libxcb-randr0 \
      libfontconfig1 libdbus-1-3 xvfb xauth >/dev/null
  fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
if [ "${INSTALL_FROM_WHEEL:-0}" = "1" ]; then
  # build the wheel users get, check it carries napari.yaml + sample_data, install it
  rm -rf dist && "$VENV/bin/python" -m pip wheel -q --no-deps . -w dist
  "$VENV/bin/python" scripts/check_wheel.py dist/*.whl
  "$VENV/bin/python" -m pip install -q "$(ls dist/*.whl)[$EXTRAS]"
else
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
fi
if [[ ",$EXTRAS," == *",test,"* ]]; then
  # the nnU-Net loader needs only dynamic_network_architectures' UNets: without --no-deps its
  # timm/torchvision requirements would replace the pinned torch with a multi-GB CUDA build
  "$VENV/bin/python" -m pip install -q --no-deps "dynamic-network-architectures>=0.4"
fi
echo "installed into $VENV"
