#!/usr/bin/env bash
# Peak VRAM and s/it of imagesite's own rendering and LoRA training on one CUDA GPU (bench/gpu_check.py
# says what is measured). Under 8 minutes on an H100/H200, no download.
#
#   bash bench/gpu_check.sh               # on the GPU machine
#   bash bench/gpu_check.sh --dry-run     # anywhere: the whole script's mechanics on the CPU, tiny models
#
# Opt-in, under memory caps that imitate smaller cards (GiB; `none` = uncapped): subject runs with prior
# preservation (class images first, in the run's own memory plan) and the out-of-memory retry. They share
# the same --budget (440 s); about 4 SDXL rows fit in one run (bench/gpu_check.py says the estimates):
#   bash bench/gpu_check.sh --families sdxl --cap-gib 8,12
#   bash bench/gpu_check.sh --families sd15 --cap-gib 6,8,12
#   bash bench/gpu_check.sh --dry-run --cap-gib 6,8,12   # their mechanics on the CPU: caps skipped, said so
#
# Python: $PYTHON, else the project's .venv when its torch sees a GPU (or for --dry-run), else python3.
# A GPU machine without internet and without diffusers (or bitsandbytes for the 8-bit rows) gets them as
# wheels fetched beforehand on a machine with internet, into .whl/ at the repository root (or
# $GPU_CHECK_WHEELS), e.g.:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1
# What worked on a lent H200 (torch 2.11, huggingface_hub 1.33 on the machine): diffusers, transformers,
# peft, accelerate, tokenizers and safetensors at our pinned versions (25 MB; pass `carry: [".whl"]`).
# Not huggingface_hub 2.x: it needs httpx2 and more; the machine's own hub serves.
# They are installed into a private folder for this run only. Without bitsandbytes the 8-bit rows are
# skipped and the table says so.
set -u
cd "$(dirname "$0")/.."

dry=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ] && { [ "$dry" = 1 ] || .venv/bin/python -c \
        "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }; then
        PY=.venv/bin/python
    else
        PY=python3
    fi
fi

wheels="${GPU_CHECK_WHEELS:-.whl}"
if compgen -G "$wheels/*.whl" >/dev/null; then
    site=/tmp/gpu-check-site
    rm -rf "$site"  # a warm machine keeps an earlier run's packages: start clean
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
        && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" \
        || echo "gpu_check: installing the wheels in $wheels failed; going on without them" >&2
fi

missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("torch", "diffusers", "transformers", "peft", "safetensors", "PIL") if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: $PY lacks: $missing (see the top of bench/gpu_check.sh for carrying wheels)" >&2
    exit 2
fi

# Nothing from the hub; logs unbuffered so a row's progress shows as it runs; one lock folder of our own.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export IMAGESITE_GPU_LOCK_DIR="${IMAGESITE_GPU_LOCK_DIR:-build/gpu_check/locks}"
exec "$PY" bench/gpu_check.py "$@"
