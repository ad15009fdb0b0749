#!/usr/bin/env bash
# The GPU measurements the open issues ask for, as one prepared command for a session that is lent a device machine
# (a bare image with torch, transformers, timm, einops, accelerate; no PyAV, decord, open_clip or xformers).
#
# Here, before the call (the peers and PyAV travel as wheels in the ignored folder .whl/; x86-64, CPython 3.12):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl av open_clip_torch ftfy wcwidth
# Then one device call (carry [".whl"], timeout_s 540):
#   bash benchmarks/device_checks.sh mfu extract encoder
#
# Sections, in the order of what the issues still miss (each bounded by its own timeout, each writing its table and
# log to $OUT, or ./device_out where $OUT is unset, so a section that fails or runs out of time costs only itself):
#   mfu      #17: bf16 training throughput and MFU of the ViT-B/16 8-frame contrastive recipe against open_clip;
#            #15: the same with 50 % / 75 % of the tokens dropped (bench_mfu.py)             ~2 min
#   extract  #17: extraction at 640 videos, 12 workers, against the transformers loop, with
#            vidvlm's stage split and the decode-bound ceiling (bench_extract.py)             ~3 min
#   encoder  #17: compiled vs eager, vidvlm joint vs VideoMAE at 16 frames, batch 32 (bench_encoder.py) ~3 min
# SMOKE=1 runs every section at toy sizes on the CPU (a check of the commands, not a measurement).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
      'cuda', torch.cuda.is_available())"; } | tee "$OUT/env.txt"

if [ "${SMOKE:-0}" = 1 ]; then
  MFU="--size tiny --batch 2 --rounds 1 --steps 1 --warmup 1 --token-drop 0.5"
  ENC="--frames 2 --models vidvlm-joint videomae --rounds 1"
  EXT="--tower tiny --num-videos 4 --num-workers 1 --batch-size 2 --runs 1"
else
  MFU="--device cuda --dtype bf16 --batch 32 --rounds 3 --steps 10 --token-drop 0.5 0.75"
  ENC="--device cuda --dtype bf16 --batch 32 --frames 16 --models vidvlm-joint videomae --modes eager compiled --rounds 3 --iters 5"
  EXT="--device cuda --num-videos 640 --clip-frames 64 --num-workers 12 --batch-size 32 --runs 3"
fi
$PY -c "import open_clip" 2>/dev/null || MFU="$MFU --cases vidvlm-8f vidvlm-1f"  # the peer did not travel

run() {  # run NAME SECONDS CMD...: the command's output in $OUT/NAME.log, its exit status in $OUT/status.txt
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc ${limit}s-limit $((SECONDS - start))s" | tee -a "$OUT/status.txt"
}

for section in "${@:-mfu extract encoder}"; do
  for s in $section; do
    case $s in
      mfu) run mfu 240 $PY benchmarks/bench_mfu.py $MFU --markdown "$OUT/mfu.md" ;;
      encoder) run encoder 300 $PY benchmarks/bench_encoder.py $ENC --markdown "$OUT/encoder.md" ;;
      extract) run extract 300 $PY benchmarks/bench_extract.py $EXT ;;
      *) echo "device_checks.sh: unknown section '$s' (mfu, extract, encoder)" >&2; exit 2 ;;
    esac
  done
done
