#!/usr/bin/env bash
# Download, on a machine with network access, the Python wheels that tools/gpu_check.py needs on
# a GPU machine that has none: mmengine and its pure-Python requirements that a CUDA PyTorch
# image usually lacks (addict, termcolor, yapf, platformdirs). Everything else the check uses
# (torch, triton, numpy, matplotlib, pyyaml, rich, opencv, einops, pytest) comes with such an
# image. Set VSSM_WHEELS_WITH_PYTEST=1 to add pytest and its requirements too.
#
#   bash tools/gpu_check_wheels.sh            # into .whl/ (ignored by git)
#   WHEEL_DIR=/some/dir bash tools/gpu_check_wheels.sh
#
# Then, on the GPU machine (no network, Python 3.12), from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 tools/gpu_check.py --out gpu_check_report
# (`make gpu-check` runs both lines.)
set -euo pipefail

cd "$(dirname "$0")/.."
WHEEL_DIR=${WHEEL_DIR:-.whl}
PY_VERSION=${VSSM_WHEELS_PYTHON:-3.12}   # the GPU machine's Python
PIP=${PIP:-python3 -m pip}

# One pinned version of each: two versions of a package in the folder break the install there.
PACKAGES=(
    mmengine==0.10.7     # the version requirements.txt pins
    addict==2.4.0
    termcolor==3.3.0
    yapf==0.43.0
    platformdirs==4.14.9  # needed by yapf
)
if [[ "${VSSM_WHEELS_WITH_PYTEST:-0}" == 1 ]]; then
    PACKAGES+=(pytest==8.4.2 pluggy==1.6.0 iniconfig==2.1.0 packaging==25.0 pygments==2.19.2)
fi

mkdir -p "$WHEEL_DIR"
# Wheels only, for CPython $PY_VERSION on x86-64 Linux (pure-Python wheels match too);
# --no-deps: the requirements above are listed by hand, so nothing the image has is duplicated.
$PIP download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$WHEEL_DIR" "${PACKAGES[@]}"

# Every package exactly once.
dupes=$(ls "$WHEEL_DIR"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [[ -n "$dupes" ]]; then
    echo "[gpu_check_wheels] $WHEEL_DIR holds several versions of: $dupes; delete the old ones" >&2
    exit 1
fi
echo "[gpu_check_wheels] $(ls "$WHEEL_DIR"/*.whl | wc -l) wheels in $WHEEL_DIR ($(du -sh "$WHEEL_DIR" | cut -f1)):"
ls "$WHEEL_DIR"
