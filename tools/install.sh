#!/usr/bin/env bash
# Install vssm_mm and the OpenMMLab stack it plugs into.
#
# Idempotent: a second run only checks what is there. Environment variables:
#   VSSM_VENV        virtual environment to create or reuse (default: <repo>/.venv)
#   VSSM_PYTHON      interpreter used to create the venv (default: python3.11, else python3)
#   VSSM_USE_ACTIVE=1  install into the current interpreter / activated env instead of a venv
#   VSSM_TORCH_SPEC  torch requirement used only when no torch is installed
#                    (default: "torch==2.14.1 torchvision==0.29.1")
#   VSSM_CACHE       cache directory for built wheels (default: ~/.cache/vssm_mm)
#   MAX_JOBS         parallel compile jobs for mmcv and the CUDA extension (default: 2)
#   FORCE_CUDA=1     build the CUDA ops of mmcv and vssm_mm without a visible GPU
#                    (set TORCH_CUDA_ARCH_LIST and CUDA_HOME too)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${VSSM_CACHE:-$HOME/.cache/vssm_mm}"
export MAX_JOBS="${MAX_JOBS:-2}"
MMCV_VERSION=2.1.0

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

# 1. Interpreter / virtual environment -----------------------------------------------------------
if [[ "${VSSM_USE_ACTIVE:-0}" == "1" ]]; then
    PY="$(command -v python || command -v python3)"
    log "installing into the active interpreter $PY"
else
    VENV="${VSSM_VENV:-$REPO/.venv}"
    if [[ ! -x "$VENV/bin/python" ]]; then
        BASE_PY="${VSSM_PYTHON:-$(command -v python3.11 || command -v python3)}"
        [[ -n "$BASE_PY" ]] || die "no python3 found; set VSSM_PYTHON to a Python >= 3.9 interpreter"
        log "creating virtual environment $VENV with $BASE_PY"
        "$BASE_PY" -m venv "$VENV"
    else
        log "reusing virtual environment $VENV"
    fi
    PY="$VENV/bin/python"
fi
# Every pip call carries the constraints: torch pulls in the newest setuptools otherwise, and
# setuptools >= 81 lacks the pkg_resources that mmcv's setup.py and mmengine's config lookup import.
PIP=("$PY" -m pip --disable-pip-version-check)
PIP_C=(-c "$REPO/tools/constraints.txt")

"$PY" - <<'PYEOF' || die "Python >= 3.9 is required"
import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)
PYEOF

# Quick path: everything already there and the project files unchanged since the last install.
STAMP_DIR="$("$PY" -c 'import sys; print(sys.prefix)')"
STAMP="$STAMP_DIR/.vssm_mm_install_stamp"
# The CPU kernels (csrc/cpu/) are compiled by the editable install: their sources are part of
# the fingerprint, so editing them rebuilds the extension on the next run.
FINGERPRINT="$(cat "$REPO/tools/install.sh" "$REPO/tools/constraints.txt" "$REPO/requirements.txt" "$REPO/setup.py" "$REPO"/csrc/cpu/* 2>/dev/null | sha256sum | cut -c1-16)-${FORCE_CUDA:-0}"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$FINGERPRINT" ]] && \
   "$PY" -c "import torch, torchvision, mmcv, mmcv.ops, mmengine, mmdet, mmseg, mmpretrain, vssm_mm" 2>/dev/null; then
    log "environment is up to date ($PY)"
    exit 0
fi

# 2. Build tooling ------------------------------------------------------------------------------
# setuptools<81: mmcv's setup.py and mmengine's 'mmdet::' config lookup both import pkg_resources.
"${PIP[@]}" install -q "${PIP_C[@]}" "setuptools>=64,<81" wheel ninja psutil

# 3. torch: respect one that is already installed ---------------------------------------------
if "$PY" -c "import torch, torchvision" 2>/dev/null; then
    log "keeping installed $("$PY" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")')"
else
    # shellcheck disable=SC2086
    log "installing ${VSSM_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
    "${PIP[@]}" install -q "${PIP_C[@]}" ${VSSM_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi

# 4. mmcv (full, with compiled ops), built once and cached -----------------------------------------
if "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
    log "mmcv $MMCV_VERSION with ops is installed"
else
    KEY="$("$PY" - <<PYEOF
import os, sys, torch
cuda = 'cu' + torch.version.cuda.replace('.', '') if (torch.version.cuda and (os.environ.get('FORCE_CUDA') == '1' or torch.cuda.is_available())) else 'cpu'
arch = os.environ.get('TORCH_CUDA_ARCH_LIST', '').replace(' ', '_').replace(';', '_') if cuda != 'cpu' else ''
print(f"mmcv-$MMCV_VERSION-torch{torch.__version__.split('+')[0]}-{cuda}{('-sm' + arch) if arch else ''}-py{sys.version_info[0]}{sys.version_info[1]}")
PYEOF
)"
    WHEEL_DIR="$CACHE/wheels/$KEY"
    WHEEL="$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)"
    if [[ -z "$WHEEL" ]]; then
        log "building mmcv $MMCV_VERSION from source ($KEY); this takes 15-40 minutes on 2 cores, once"
        BUILD="$(mktemp -d)"
        trap 'rm -rf "$BUILD"' EXIT
        "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$BUILD" "mmcv==$MMCV_VERSION"
        tar -xzf "$BUILD"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD"
        # torch >= 2.14 headers require C++20; mmcv 2.1.0 hard-codes c++14/c++17.
        sed -i -e 's/c++14/c++20/g' -e 's/c++17/c++20/g' "$BUILD/mmcv-$MMCV_VERSION/setup.py"
        (cd "$BUILD/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$BUILD/dist" .)
        mkdir -p "$WHEEL_DIR"
        cp "$BUILD"/dist/mmcv-*.whl "$WHEEL_DIR/"
        WHEEL="$(ls "$WHEEL_DIR"/mmcv-*.whl | head -n1)"
        log "cached $WHEEL"
    else
        log "using cached $WHEEL"
    fi
    "${PIP[@]}" install -q --no-deps --force-reinstall "$WHEEL"
fi

# 5. The rest of the stack and the project -------------------------------------------------------
"${PIP[@]}" install -q "${PIP_C[@]}" -r "$REPO/requirements.txt"
# Editable, without build isolation so that setup.py sees the installed torch; this also builds
# the CPU selective-scan kernels (vssm_mm._C_cpu) when a C++ compiler is found.
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$REPO"
"$PY" - <<'PYEOF'
import shutil
try:
    import vssm_mm._C_cpu as ext
    print(f"[install] CPU selective-scan kernels built ({ext.isa()}): the default for CPU tensors")
except ImportError as err:
    why = ('no C++ compiler (c++) on PATH' if shutil.which('c++') is None and shutil.which('g++') is None
           else f'they did not compile or load ({err})')
    print(f"[install] CPU selective-scan kernels not built: {why}. CPU tensors use the slower "
          "'reference' backend; install a C++ compiler and rerun the install to build them.")
PYEOF

"$PY" - <<'PYEOF'
import mmcv, mmcv.ops, mmengine, mmdet, mmseg, mmpretrain, torch, vssm_mm
print(f"[install] ok: torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}, vssm_mm {vssm_mm.__version__}")
PYEOF
echo "$FINGERPRINT" > "$STAMP"
