#!/usr/bin/env bash
# The GPU check on the device machine (no network): install the wheels that travel in .gpu/
# (made beforehand by `python bench/gpu_prepare.py`), then run bench/gpu_check.py. Its table,
# gpu_check.json, the training profile and this log land in $OUT (default runs/gpu-check).
#   device call: command "bash bench/gpu_check.sh", carry [".gpu"], timeout_s 560
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .gpu/wheels ] || [ ! -d .gpu/tokenizer ]; then
  echo "error: .gpu/ is incomplete: run 'python bench/gpu_prepare.py' first, and carry .gpu" >&2
  exit 2
fi
site=/tmp/medvl-gpu-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/wheels/*.whl || exit 2
export PYTHONPATH="$PWD/src:$site:$PWD/.gpu/unpacked${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out="${OUT:-runs/gpu-check}"
mkdir -p "$out"
python3 bench/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/log.txt"
