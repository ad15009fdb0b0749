#!/usr/bin/env bash
# The GPU measurements the open issues ask for, as one prepared command for a session that is lent a device machine
# (a bare image with torch, transformers, timm, einops, accelerate; no PyAV, decord, open_clip or xformers).
#
# Here, before the call (the peers and PyAV travel as wheels in the ignored folder .whl/; x86-64, CPython 3.12):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl av gguf open_clip_torch ftfy wcwidth peft pytest pluggy iniconfig pygments pytest-timeout
#                                                                     # 39 MB (checked 2026-12-04)
# Then device calls (carry [".whl"], timeout_s 600), the most wanted first; each section's limit is below:
#   bash benchmarks/device_checks.sh extract mfu              # what the thirty-first session's H200 call left, and
#                                                               mfu again: its model no longer reads the GPU (32nd)
#   bash benchmarks/device_checks.sh gpu-tests mfu-trainer mfu-batch    # the next call (one call took 3 min 11 s
#                                                               for mfu extract encoder); then mfu-fused mfu-compile
#
# Sections, in the order of what the issues still miss (each bounded by its own timeout, each writing its table and
# log (tables included) to $OUT, or ./device_out where $OUT is unset, so a section that fails or runs out of time
# costs only itself; a call brings back at most 8 files):
#   mfu      #17: bf16 training throughput and MFU of the ViT-B/16 8-frame contrastive recipe against open_clip;
#            #15: the same with 50 % / 75 % of the tokens dropped (bench_mfu.py)             ~1 min on an H200
#   mfu-compile  the same two main cases with vidvlm's blocks compiled (compile: true)      ~2 min
#   mfu-fused    the same with torch's fused AdamW on both sides (optim.fused: true)          ~1 min
#   mfu-batch    vidvlm-8f and open_clip at batch 64 (MFU_BATCH) instead of 32: does MFU grow with the batch (host
#                launches and syncs amortised) or not (the kernels themselves)?                ~1.5 min
#   mfu-trainer  vidvlm-8f bare against the same step through the trainer (its copy of the batch to the device,
#                seeding, clipping, skip decision, schedule) on pre-made batches                  ~1 min
#   gpu-tests  the suite's CUDA-only tests: a training step of every family under torch's sync debug mode (what
#            the counts on the meta device stand for), pinned copies, attention and pooling kernels, the trainer
#            under fp16 / bf16 (pytest and peft travel as wheels)                                  ~1 min?
#   extract  #17: extraction at 640 videos, 12 workers, against the transformers loop, with
#            vidvlm's stage split and the decode-bound ceiling (bench_extract.py)             ~3 min
#   encoder  #17: compiled vs eager, vidvlm joint vs VideoMAE at 16 frames, batch 32 (bench_encoder.py) ~1 min
#   generate decoding with the key/value cache, without it, and HF GPT-2 generate on the GPU (bench_generate.py; measured
#            on the CPU only so far)                                                               ~1 min?
#   llava    #14: the SmolLM2 recipe (configs/llava_smollm2_8f_shapes.yaml, bf16, LLAVA_SET overrides), then
#            tools/eval.py on the held-out test clips. A call of its own: it needs the av and gguf wheels in .whl,
#            the contrastive tower run (carry runs/contrastive_tiny_8f_shapes/final, 2 MB) and SmolLM2's GGUF (98 MB,
#            over one call's 64 MiB): split it here (mkdir .gg; echo /.gg/ >> .git/info/exclude;
#            split -b 48M <.venv/.../SmolLM2-135M-Instruct.Q4_1.gguf> .gg/smollm2.part-), then three calls back to
#            back (the machine stays warm 30 s after a call, and what earlier calls carried stays there):
#            carry [".whl", "runs/contrastive_tiny_8f_shapes/final"] command `true`; carry [".gg/smollm2.part-aa"]
#            command `true`; carry [".gg/smollm2.part-ab"] command `bash benchmarks/device_checks.sh llava`.
#            Clips are generated there (data.synthetic, about 2 min on one core). Time there: unknown (LLAVA_LIMIT,
#            default 420 s); where the limit cuts training, the newest checkpoint-* is evaluated instead of final/
#            (status.txt says which). LLAVA_FIT=SECONDS first times LLAVA_FIT_STEPS (12) steps of each stage there and
#            scales every stage's steps alike to train for about that long (the tiny LM needed about 12x the
#            recipe's 12,800 samples). In one 600-s call, with the clips made by the timing run (about 2.5 min):
#            LLAVA_FIT=200 LLAVA_LIMIT=330 bash benchmarks/device_checks.sh llava-leads
#   llava-leads  the same with the tiny study's best setting (the config header's "leads" command: per-frame +
#            tubelet streams, class vectors, bidirectional visual attention, frame times, 12,000 instruction clips,
#            every question of a clip per sample, captions in the task stage, the tower trained in joint), same
#            calls as llava.
# SMOKE=1 runs every section at toy sizes on the CPU (a check of the commands, not a measurement). Before a llava
# call, `python benchmarks/meta_step.py --config <the run's config>` runs one step of each stage on the meta device
# here: a step that mixes devices fails there as it would on the GPU (80565c2's LLaVA layout did).
# Every call first appends the machine's environment and whether its kernel fingerprint is stable to status.txt.
# Measured so far (BENCHMARKS.md): mfu and encoder on an H200 (thirty-first session). extract failed there at once on
# PyAV 19.0.2, which rejects av.open's metadata_errors (fixed since: vidvlm passes it only to PyAV < 19); mfu-compile
# and the llava sections have not run on a GPU yet. The three times above are the H200's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  # only the wheels this interpreter can install (a SMOKE run on another Python would otherwise fail them all)
  mapfile -t WHEELS < <($PY - <<'PYEOF'
import glob
from pip._vendor.packaging.tags import sys_tags
from pip._vendor.packaging.utils import parse_wheel_filename
ok = set(sys_tags())
for path in sorted(glob.glob(".whl/*.whl")):
    if ok & set(parse_wheel_filename(path.rsplit("/", 1)[-1])[3]):
        print(path)
PYEOF
)
  [ ${#WHEELS[@]} -gt 0 ] && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${WHEELS[@]}" && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
      'cuda', torch.cuda.is_available())"; } | tee -a "$OUT/status.txt"
# Where the numbers come from (vidvlm.environment, into status.txt), and its kernel fingerprint from a second
# process: on a GPU it hashes forward kernels only; if it changed between two processes, every resume there would warn.
KERNELS=()
for i in 1 2; do
  KERNELS+=("$($PY -c "import json; from vidvlm.environment import environment; e = environment()
print(e['kernels']); print(json.dumps(e), file=open('$OUT/status.txt', 'a'))")")
done
echo "kernels ${KERNELS[0]} $([ "${KERNELS[0]}" = "${KERNELS[1]}" ] && echo "stable" || echo "CHANGED in a second process: ${KERNELS[1]}")" |
  tee -a "$OUT/status.txt"

if [ "${SMOKE:-0}" = 1 ]; then
  MFU="--size tiny --batch 2 --rounds 1 --steps 1 --warmup 1 --token-drop 0.5"
  ENC="--frames 2 --models vidvlm-joint videomae --rounds 1"
  EXT="--tower tiny --num-videos 4 --num-workers 1 --batch-size 2 --runs 1"
  GEN="--batch 2 --repeats 1 --cases caption_default"
  LLAVA_DEV="stages.0.steps=2 stages.1.steps=2 stages.2.steps=2 stages.3.steps=2 log_every=1 eval_every=0"
  EVAL_DEV=(--device cpu --num-workers 0)
  [ -f data/shapes_llava8s/test/manifest.jsonl ] &&  # llava's clips, where they were generated
    head -n 4 data/shapes_llava8s/test/manifest.jsonl >data/shapes_llava8s/test/smoke.jsonl
  TEST=data/shapes_llava8s/test/smoke.jsonl
else
  MFU="--device cuda --dtype bf16 --batch 32 --rounds 3 --steps 10 --token-drop 0.5 0.75"
  ENC="--device cuda --dtype bf16 --batch 32 --frames 16 --models vidvlm-joint videomae --modes eager compiled --rounds 3 --iters 5"
  EXT="--device cuda --num-videos 640 --clip-frames 64 --num-workers 12 --batch-size 32 --runs 3"
  GEN="--device cuda --batch 16 --repeats 5"
  LLAVA_DEV="mixed_precision=bf16 data.num_workers=8"
  EVAL_DEV=(--device cuda --num-workers 8 --batch-size 64)
  TEST=data/shapes_llava8s/test/manifest.jsonl
fi
$PY -c "import open_clip" 2>/dev/null || MFU="$MFU --cases vidvlm-8f vidvlm-1f"  # the peer did not travel
GPU_TESTS=(tests/models/test_device_reads.py tests/test_devices.py tests/layers/test_attention.py
  tests/layers/test_pooling.py tests/models/test_contrastive.py tests/train/test_trainer.py)

run() {  # run NAME SECONDS CMD...: the command's output in $OUT/NAME.log, its exit status in $OUT/status.txt
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc ${limit}s-limit $((SECONDS - start))s" | tee -a "$OUT/status.txt"
}

# The tiny study's best setting on SmolLM2 (configs/llava_smollm2_8f_shapes.yaml, header): an array, so that the
# values with spaces stay one override each.
TOWER=runs/contrastive_tiny_8f_shapes/final
LEADS=(
  "model.front_end.tower={name: ensemble, members: [{name: checkpoint, source: $TOWER, layers: [-2, -1], per_frame: true}, {name: checkpoint, source: $TOWER, layers: [-2, -1]}]}"
  "model.front_end.pooler={name: spatial2d, params: {size: 3, num_prefix_tokens: 1, keep_prefix: true}}"
  model.visual_attention=bidirectional model.frame_times=true model.max_length=352
  "data.synthetic.sets.qa12k={num: 12000, seed: 1, split: train, frames: 16, fps: 2, size: 48, shapes: [1, 3], events: true, conversations: true, compositional: true}"
  data.datasets.qa.manifest=data/shapes_llava8s/qa12k/manifest.jsonl "data.datasets.qa.options={qa_turns: 7}"
  "stages.3.mixture={qa: 0.8, captions: 0.2}"
  model.front_end.freeze_tower=false "stages.2.trainable=[front_end.*, '*.lora_*']"
)

llava_fit() {  # llava_fit NAME [OVERRIDES...]: LLAVA_SET words that stretch (or shrink) every stage of the recipe
  # alike so that its training takes about LLAVA_FIT seconds, from a short timing run of each stage on this machine
  # (LLAVA_FIT_STEPS steps per stage; the first two of each stage are left out of its median step time).
  local name=$1 timing=runs/${1}_smollm2_timing n=${LLAVA_FIT_STEPS:-12}
  shift
  # shellcheck disable=SC2086  # LLAVA_DEV is words
  run "${name}_timing" 300 $PY tools/train.py --config configs/llava_smollm2_8f_shapes.yaml output_dir=$timing \
    --overwrite $LLAVA_DEV "$@" stages.0.steps=$n stages.1.steps=$n stages.2.steps=$n stages.3.steps=$n \
    log_every=1 eval_every=0 checkpoint_every=100000
  LLAVA_SET=$($PY - "$timing/metrics.jsonl" "${LLAVA_FIT}" "$@" 2>>"$OUT/status.txt" <<'PYEOF'
import json, statistics, sys
from vidvlm.train.config import load_train_config
metrics, budget, overrides = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
stages = load_train_config("configs/llava_smollm2_8f_shapes.yaml", overrides).stages
times = {}
for line in open(metrics):
    row = json.loads(line)
    if "step_time_s" in row and "stage" in row:
        times.setdefault(row["stage"], []).append(row["step_time_s"])
per_step = [statistics.median(times[s.name][2:] or times[s.name]) for s in stages]
k = budget / sum(s.steps * t for s, t in zip(stages, per_step))
print(" ".join(f"stages.{i}.steps={max(1, round(s.steps * k))}" for i, s in enumerate(stages)))
print(f"llava_fit: step s {[round(t, 3) for t in per_step]}, recipe x {k:.2f} to fill {budget:.0f} s", file=sys.stderr)
PYEOF
  ) || LLAVA_SET=""
  echo "${name}_fit LLAVA_SET='$LLAVA_SET'" | tee -a "$OUT/status.txt"
}

llava() {  # llava NAME [OVERRIDES...]: the SmolLM2 recipe (+ overrides, + ${LLAVA_SET} words) and its held-out eval
  local name=$1 gguf=smollm2 run_dir=runs/${1}_smollm2_device checkpoint
  shift
  if ls .gg/smollm2.part-* >/dev/null 2>&1; then
    cat .gg/smollm2.part-* >/tmp/smollm2.gguf && gguf=/tmp/smollm2.gguf
  fi
  [ -f lms/smollm2/config.json ] || run "${name}_prepare" 180 $PY tools/prepare_lm.py $gguf --out lms/smollm2 --overwrite
  [ -n "${LLAVA_FIT:-}" ] && llava_fit "$name" "$@"
  # shellcheck disable=SC2086  # LLAVA_DEV and LLAVA_SET are words
  run "${name}_train" "${LLAVA_LIMIT:-420}" $PY tools/train.py --config configs/llava_smollm2_8f_shapes.yaml \
    output_dir=$run_dir --overwrite $LLAVA_DEV "$@" ${LLAVA_SET:-}
  cp "$run_dir/metrics.jsonl" "$OUT/${name}_metrics.jsonl" 2>/dev/null
  checkpoint=$run_dir/final  # a run cut by the limit: its newest complete checkpoint
  [ -d "$checkpoint" ] || checkpoint=$($PY -c "import sys; from vidvlm.train.checkpoint import latest_checkpoint
print(latest_checkpoint(sys.argv[1]) or '')" "$run_dir")
  echo "${name}_eval checkpoint=${checkpoint:-none}" | tee -a "$OUT/status.txt"
  [ -n "$checkpoint" ] || return
  run "${name}_eval" 240 $PY tools/eval.py --checkpoint "$checkpoint" --manifest "$TEST" "${EVAL_DEV[@]}" \
    --predictions "$OUT/${name}_answers.jsonl" --out "$OUT/${name}_test_metrics.json"
}

for section in "${@:-mfu extract encoder}"; do
  for s in $section; do
    case $s in
      mfu) run mfu 240 $PY benchmarks/bench_mfu.py $MFU ;;
      mfu-compile) run mfu_compile 300 $PY benchmarks/bench_mfu.py $MFU --compile --token-drop --cases vidvlm-8f \
        $($PY -c "import open_clip" 2>/dev/null && echo open_clip-8f) ;;
      mfu-batch) run mfu_batch 300 $PY benchmarks/bench_mfu.py $MFU --batch "${MFU_BATCH:-64}" --token-drop \
        --cases vidvlm-8f $($PY -c "import open_clip" 2>/dev/null && echo open_clip-8f) ;;
      mfu-trainer) run mfu_trainer 240 $PY benchmarks/bench_mfu.py $MFU --token-drop --cases vidvlm-8f vidvlm-8f-trainer ;;
      mfu-fused) run mfu_fused 240 $PY benchmarks/bench_mfu.py $MFU --set optim.fused=true --token-drop \
        --cases vidvlm-8f vidvlm-1f $($PY -c "import open_clip" 2>/dev/null && echo open_clip-8f) ;;
      encoder) run encoder 300 $PY benchmarks/bench_encoder.py $ENC ;;
      llava) llava llava ;;
      llava-leads) llava leads "${LEADS[@]}" ;;
      extract) run extract 300 $PY benchmarks/bench_extract.py $EXT ;;
      generate) run generate 180 $PY benchmarks/bench_generate.py $GEN --json "$OUT/generate.json" ;;
      gpu-tests) run gpu_tests 300 $PY -m pytest -q -m gpu -p no:cacheprovider "${GPU_TESTS[@]}" ;;
      *) echo "device_checks.sh: unknown section '$s' (mfu, mfu-compile, mfu-fused, mfu-trainer, mfu-batch, gpu-tests, extract, encoder, generate, llava, llava-leads)" >&2; exit 2 ;;
    esac
  done
done
