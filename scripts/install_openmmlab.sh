#!/usr/bin/env bash
# Install the OpenMMLab stack (mmengine, mmcv with compiled ops, mmdet, mmpose) into the *active* virtual
# environment, next to the torch that is already there. Used by `trainer: mmdet` and by the keypoint estimator's
# `backend: mmpose`; see docs/openmmlab.md for why every step is needed and how long it takes.
#
#   . .venv/bin/activate && scripts/install_openmmlab.sh
#
# It never installs, upgrades or downgrades torch/torchvision: every pip call is constrained to the installed
# pair. OpenMMLab publishes no mmcv wheel for current torch releases, so mmcv is compiled from its PyPI sdist once
# (CPU ops; CUDA ops too when nvcc and a GPU are present) and the wheel is cached under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/avanon/wheels/mmcv-<mmcv>-torch<torch build>-<python tag>-<cpu|cuXY>/
# so that later installs (a second venv, CI) take a minute. With internet access and a torch that OpenMMLab
# built wheels for (torch <= 2.1), their wheel index is the faster route; see docs/openmmlab.md.
#
# Environment: MAX_JOBS (compile jobs, default 2), AVANON_WHEEL_CACHE (cache root), MMCV_VERSION, MMCV_CFLAGS (compile
# flags, default -O3 -g0 -DNDEBUG -fwrapv), PIP (pip command).
set -euo pipefail

MMENGINE_VERSION=${MMENGINE_VERSION:-0.10.7}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}     # mmdet 3.3 accepts mmcv >=2.0.0rc4,<2.2.0
MMDET_VERSION=${MMDET_VERSION:-3.3.0}
MMPOSE_VERSION=${MMPOSE_VERSION:-1.3.2}
XTCOCOTOOLS_VERSION=${XTCOCOTOOLS_VERSION:-1.14.3}
export MAX_JOBS=${MAX_JOBS:-2}
export MMCV_WITH_OPS=1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '[install_openmmlab %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
run() { say "+ $*"; "$@"; }

PY=${PYTHON:-python}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)'; then
    echo "install_openmmlab.sh: no virtual environment is active; activate the one avanon runs in first" \
         "(. .venv/bin/activate)" >&2
    exit 2
fi
if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
    echo "install_openmmlab.sh: torch/torchvision are not importable in $("$PY" -c 'import sys; print(sys.prefix)');" \
         "install avanon first: pip install -c constraints.txt -e '.[test]'" >&2
    exit 2
fi
PIP=${PIP:-"$PY -m pip"}

read -r TORCH_VERSION TORCH_BUILD TORCHVISION_VERSION NUMPY_VERSION PYTAG DEVICE <<<"$("$PY" - <<'PYEOF'
import sys, torch, torchvision, numpy
cuda = torch.version.cuda
device = "cu" + cuda.replace(".", "") if cuda and torch.cuda.is_available() else "cpu"
print(torch.__version__.split("+")[0], torch.__version__, torchvision.__version__.split("+")[0], numpy.__version__,
      f"cp{sys.version_info.major}{sys.version_info.minor}", device)
PYEOF
)"
say "venv: $("$PY" -c 'import sys; print(sys.prefix)')  python: $PYTAG  torch: $TORCH_BUILD ($DEVICE)" \
    " torchvision: $TORCHVISION_VERSION  numpy: $NUMPY_VERSION  MAX_JOBS=$MAX_JOBS"

# Constraints: the repository's tested pins, with torch/torchvision/numpy replaced by what is installed, so no
# pip call below can touch them.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cons=$work/constraints.txt
{
    if [ -f "$here/constraints.txt" ]; then
        grep -v -E '^(torch|torchvision|numpy)==' "$here/constraints.txt" || true
    fi
    echo "torch==$TORCH_VERSION"
    echo "torchvision==$TORCHVISION_VERSION"
    echo "numpy==$NUMPY_VERSION"
} >"$cons"
pipi() { run $PIP install -c "$cons" "$@"; }

# 1. Build tools. setuptools < 81: mmcv 2.1's setup.py imports pkg_resources, which setuptools 81 removed.
#    --no-build-isolation below makes the builds use these (and the installed torch/numpy) instead of fresh ones.
pipi "setuptools<81" wheel cython ninja

# 2. Pure-Python OpenMMLab packages and their runtime dependencies. They are installed with --no-deps because
#    mmengine and mmpose require opencv-python, which would install a second cv2 over avanon's
#    opencv-python-headless, and mmpose requires chumpy (for its SMPL utilities only; the top-down models run
#    without it); the list below is their remaining requirements.
pipi addict rich termcolor yapf six terminaltables json-tricks munkres packaging matplotlib scipy shapely \
     pycocotools pillow pyyaml tqdm
pipi --no-deps "mmengine==$MMENGINE_VERSION"

# 3. xtcocotools (mmpose): its PyPI wheels are compiled against numpy 1 and fail under numpy 2 with
#    "numpy.dtype size changed"; compile it against the installed numpy.
if "$PY" -c "import xtcocotools.mask" 2>/dev/null \
   && [ "$("$PY" -c 'from importlib.metadata import version as v; print(v("xtcocotools"))')" = "$XTCOCOTOOLS_VERSION" ]
then
    say "xtcocotools $XTCOCOTOOLS_VERSION already importable"
else
    pipi --no-deps --no-binary xtcocotools --no-build-isolation --force-reinstall "xtcocotools==$XTCOCOTOOLS_VERSION"
fi

# 4. mmcv with ops, from the cache or compiled once.
cache_root=${AVANON_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/avanon/wheels}
# keyed by the exact torch build (2.14.1+cu130 and 2.14.1+cpu are different binaries)
cache=$cache_root/mmcv-$MMCV_VERSION-torch$TORCH_BUILD-$PYTAG-$DEVICE
mkdir -p "$cache"
wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ]; then
    say "using cached mmcv wheel $wheel"
else
    say "no cached mmcv wheel in $cache: compiling mmcv $MMCV_VERSION from source" \
        "(measured: 33 min on 2 busy CPU cores, MAX_JOBS=2)"
    run $PIP download -c "$cons" --no-deps --no-binary mmcv --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work"
    run tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
    src=$work/mmcv-$MMCV_VERSION
    # torch 2.14's ATen headers refuse anything older than C++20 ("C++20 or later compatible compiler is
    # required to use ATen"); mmcv 2.1 hard-codes -std=c++17 (and c++14 for old torch) in setup.py.
    run sed -i -e 's/-std=c++1[47]/-std=c++20/g' "$src/setup.py"
    if ! grep -q -- '-std=c++20' "$src/setup.py"; then
        echo "install_openmmlab.sh: patching mmcv's -std flag failed" >&2
        exit 1
    fi
    build_start=$(date +%s)
    # CFLAGS replaces Python's own compile flags (-g -O3 ...): -O3 as those, -g0: no debug information, which
    # makes the compile markedly faster and the wheel smaller.
    CFLAGS="${MMCV_CFLAGS:--O3 -g0 -DNDEBUG -fwrapv}" run $PIP wheel -c "$cons" --no-deps --no-build-isolation \
        -w "$cache" "$src"
    say "mmcv compiled in $(( $(date +%s) - build_start )) s"
    wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)
fi
pipi --no-deps --force-reinstall "$wheel"

# 5. mmdet and mmpose (pure Python).
pipi --no-deps "mmdet==$MMDET_VERSION" "mmpose==$MMPOSE_VERSION"

# 6. Check: imports, compiled ops, numpy 2 compatibility of xtcocotools, torch untouched.
run "$PY" - <<PYEOF
import torch, numpy
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", f"torch changed to {torch.__version__}"
assert numpy.__version__ == "$NUMPY_VERSION", f"numpy changed to {numpy.__version__}"
import mmengine, mmcv, mmdet, mmpose
from mmcv.ops import RoIAlign, nms
import xtcocotools.mask
boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
print(f"OK: mmengine {mmengine.__version__}, mmcv {mmcv.__version__} (ops), mmdet {mmdet.__version__},"
      f" mmpose {mmpose.__version__}, torch {torch.__version__}, numpy {numpy.__version__}")
PYEOF
