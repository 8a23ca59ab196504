#!/usr/bin/env bash
# The whole GPU check of issue 21 as one command on the device machine, inside one time limit (LIMIT seconds):
# pre-training first (bench/gpu_session.py), then inference throughput (bench/gpu_throughput.py) in what is left.
# The machine's python3 holds torch and timm; the other dependencies travel as wheels in .whl, the HER2ST subset in
# devdata/ (both made by bench/gpu_inputs.sh). Everything is written under $OUT; the encoder comes back halved (fp16)
# in parts of at most 15 MB.
#   bash bench/gpu_session.sh
set -uo pipefail
START=$(date +%s)
LIMIT=${LIMIT:-540}
OUT=${OUT:-/tmp/gpu_out}
DATA=${DATA:-devdata/her2st}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu_session.log"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu_session.log"
python3 bench/gpu_session.py --data "$DATA" --out "$OUT" --pretrain-seconds "${PRETRAIN_SECONDS:-200}"
python3 - "$OUT" <<'PY'
import sys, pathlib
from safetensors.torch import load_file, save_file
out = pathlib.Path(sys.argv[1])
if (out / "final/model.safetensors").is_file():
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(out / "final/model.safetensors").items()}
    save_file(state, str(out / "model_fp16.safetensors"), metadata={"format": "pt"})
PY
if [ -f "$OUT/model_fp16.safetensors" ]; then
  mv "$OUT/final/config.json" "$OUT/encoder_config.json" && rm -rf "$OUT/final"
  split -b 15M -d "$OUT/model_fp16.safetensors" "$OUT/model_fp16.part" && rm "$OUT/model_fp16.safetensors"
fi
LEFT=$(( LIMIT - ($(date +%s) - START) - 10 ))
echo "throughput bench gets ${LEFT} s"
if [ "$LEFT" -gt 20 ]; then
  timeout "$LEFT" python3 bench/gpu_throughput.py --data "$DATA" --json "$OUT/gpu_throughput.json"
fi
ls -la "$OUT"
