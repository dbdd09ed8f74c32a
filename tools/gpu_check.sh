#!/usr/bin/env bash
# The GPU check: one prepared run, under 8 minutes on one NVIDIA H200 (the
# reference GPU), from the repository root. Every figure goes to $OUT as
# logs and JSON:
#
#   1. environment: nvidia-smi, Python / torch / CUDA / package versions
#   2. a large bfloat16 matrix product, TFLOP/s (the card's reference rate,
#      measured as tools/benchmark.py measures it)
#   2b. tools/benchmark_attention.py: the attention kernels for a biased
#      ViT-B/16 attention (SDPA backends, FlexAttention), time and error
#   3. the CUDA-marked tests (`pytest -m cuda`)
#   4. 50 iterations of the ViT-B/16 BEiT v2 pretraining recipe
#      (configs/beitv2/beitv2_vit-base-p16_8xb256-amp-coslr-300e_in1k.py)
#      through tools/train.py under float16 AMP, then under bfloat16 AMP
#   5. tools/benchmark.py, ours vs the upstream peer, for the three jobs
#      (pretraining v1 / v2, ImageNet fine-tuning, UperNet 512 / 640) and the
#      pretraining data pipeline, --device cuda --amp bf16, with profiles
#   6. time left over: how the fine-tuning step grows with resolution and batch
#
# Each step has its own timeout, capped by what is left of BUDGET_S (default
# 460 s) so that the whole run ends in time; a step the budget no longer
# allows is skipped and said so. A failing step does not stop the others.
#
#   bash tools/gpu_check.sh                 # on the GPU machine
#   bash tools/gpu_check.sh --dry-run       # the same steps, tiny, on a CPU
#   bash tools/gpu_check.sh --fetch-wheels  # here: the wheels the GPU lacks
#
# Python: $PYTHON if set, else .venv/bin/python, python3, python -- the
# first that imports torch, mmengine, mmcv, mmpretrain and mmseg. If none
# does, the wheels in $WHEELS (default .whl, made by --fetch-wheels: the
# OpenMMLab packages and their pure-Python needs at this checkout's tested
# versions) are installed with pip --no-index into $WORK/site for the
# python3 that holds torch (the GPU image's). The repository itself is
# imported from the working tree (PYTHONPATH), installed or not.
#
# Environment: OUT (default ./gpu_check_out), WORK (scratch: checkpoints,
# work dirs; default /tmp/gpu_check), BUDGET_S, TRAIN_BATCH (default the
# recipe's 256), TRAIN_ITERS (default 50), TRAIN_WORKERS (default 8).
# $OUT gets at most 9 files: gpu_check.log, summary.json, attention.md/json,
# benchmark.md/json, sweep.md/json, tests.xml.
set -u -o pipefail
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  --dry-run|--cpu) MODE=dry ;;
  --fetch-wheels) MODE=fetch ;;
  '') ;;
  *) echo "usage: bash tools/gpu_check.sh [--dry-run | --fetch-wheels]" >&2
     exit 2 ;;
esac

OUT=${OUT:-./gpu_check_out}
WORK=${WORK:-/tmp/gpu_check}
WHEELS=${WHEELS:-.whl}
BUDGET_S=${BUDGET_S:-460}
# what the GPU image (Python 3.12, torch, numpy, opencv, scipy, rich,
# einops, regex ...) lacks; versions: those of the environment that ran the
# test suite here
NEEDED_WHEELS="mmengine mmcv-lite mmpretrain mmsegmentation addict yapf
platformdirs termcolor mat4py modelindex ordered-set ftfy wcwidth prettytable
importlib-metadata setuptools"

if [ "$MODE" = fetch ]; then
  # run where pip reaches an index; the GPU machine reaches none
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  PINS=$("$PY" -m pip freeze --all 2>/dev/null |
         grep -i -E "^($(echo $NEEDED_WHEELS | tr ' ' '|' | sed 's/-/[-_]/g'))==")
  echo "$PINS"
  for pin in $PINS; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
        --abi none --platform any -d "$WHEELS" "$pin" 2>/dev/null ||
      "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "$pin" ||
      echo "!! no wheel for $pin"
  done
  ls -la "$WHEELS"
  git check-ignore -q "$WHEELS" ||
    echo "note: $WHEELS is not ignored by git; to carry it as an ignored path:" \
         "echo /$WHEELS/ >> .git/info/exclude"
  exit 0
fi

mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE=$!
STEPS=$WORK/steps.tsv
: >"$STEPS"
START=$(date +%s)
echo "gpu_check mode=$MODE start=$(date -u +%FT%TZ) budget=${BUDGET_S}s" \
     "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# step NAME TIMEOUT_S COMMAND...: run with its own timeout, capped by the
# budget left; one line per step in $STEPS (name, exit status, seconds)
step() {
  local name=$1 limit=$2 left t0 rc
  shift 2
  left=$((START + BUDGET_S - $(date +%s)))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped, ${left}s of the budget left"
    printf '%s\tskipped\t0\n' "$name" >>"$STEPS"
    return 0
  fi
  [ "$limit" -gt $((left - 10)) ] && limit=$((left - 10))
  echo "== $name (timeout ${limit}s)"
  t0=$(date +%s)
  if declare -F "$1" >/dev/null; then
    # a function of this script (exported below): through a child bash
    timeout --kill-after=10 "$limit" bash -o pipefail -c '"$@"' "$name" "$@"
  else
    timeout --kill-after=10 "$limit" "$@"
  fi
  rc=$?
  [ "$rc" -eq 124 ] && echo "== $name: timed out after ${limit}s"
  printf '%s\t%s\t%s\n' "$name" "$rc" $(($(date +%s) - t0)) >>"$STEPS"
  echo "== $name: exit $rc, $(($(date +%s) - t0))s"
  return 0
}

# ---------------------------------------------------------------------------
# Python with the packages
# ---------------------------------------------------------------------------
has_packages() {
  "$1" -c 'import torch, mmengine, mmcv, mmpretrain, mmseg' >/dev/null 2>&1
}
find_python() {
  local cand
  for cand in "${PYTHON:-}" .venv/bin/python python3 python; do
    [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 || continue
    if has_packages "$cand"; then PY=$cand; return 0; fi
  done
  return 1
}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
PY=
if find_python; then
  echo "python: $PY has the packages"
elif ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  BASE=${PYTHON:-python3}
  echo "python: none has the packages; installing $WHEELS/*.whl for $BASE"
  step install-wheels 120 "$BASE" -m pip install -q --no-index --no-deps \
      --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$WHEELS"/*.whl
  export PYTHONPATH=$PWD:$WORK/site${PYTHONPATH#"$PWD"}
  has_packages "$BASE" && PY=$BASE
fi
if [ -z "$PY" ]; then
  echo "!! no Python with torch, mmengine, mmcv, mmpretrain and mmseg, and no" \
       "wheels in $WHEELS: run 'bash tools/gpu_check.sh --fetch-wheels' where" \
       "pip reaches an index and carry $WHEELS"
  exit 1
fi

if [ "$MODE" = gpu ]; then
  DEVICE=cuda
  if ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    echo "!! torch sees no CUDA device; for a CPU rehearsal use --dry-run"
    exit 1
  fi
else
  DEVICE=cpu
fi

# ---------------------------------------------------------------------------
# 1. environment, 2. matrix-product rate
# ---------------------------------------------------------------------------
environment() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
      --format=csv
  else
    echo "no nvidia-smi"
  fi
  "$PY" - "$WORK/env.json" <<'EOF'
import json, platform, sys
import torch, mmengine, mmcv, mmpretrain, mmseg
import beit_plugin
env = dict(python=platform.python_version(), executable=sys.executable,
           torch=torch.__version__, cuda=torch.version.cuda,
           cudnn=torch.backends.cudnn.version(),
           gpu=torch.cuda.get_device_name() if torch.cuda.is_available()
           else None, mmengine=mmengine.__version__, mmcv=mmcv.__version__,
           mmpretrain=mmpretrain.__version__, mmseg=mmseg.__version__,
           beit_plugin=beit_plugin.__file__, cpus=torch.get_num_threads())
print(json.dumps(env, indent=1))
json.dump(env, open(sys.argv[1], 'w'))
EOF
}

matmul_rate() {  # the yardstick tools/benchmark.py measures, in bfloat16
  "$PY" - "$DEVICE" "$WORK/matmul.json" <<'EOF'
import json, sys
sys.path.insert(0, 'tools')
from benchmark import matmul_tflops  # noqa: E402
device, out = sys.argv[1], sys.argv[2]
rate = dict(matmul_tflops(device, 'bf16'), device=device)
print(f"bf16 matmul {rate['n']}^3 on {device}: {rate['tflops']:.1f} TFLOP/s "
      '(mean of 5 after 2 warm-ups)')
json.dump(rate, open(out, 'w'))
EOF
}

export PY WORK OUT MODE DEVICE
export -f environment matmul_rate
step environment 60 environment
step matmul 60 matmul_rate

# which attention kernel serves BEiT's biased attention fastest, and exactly
if [ "$MODE" = gpu ]; then
  ATTN=(--device cuda --dtype bfloat16 --batch 64 --heads 12 --tokens 197
        --head-dims 64)
else
  ATTN=(--device cpu --steps 2 --warmup 1 --no-flex)
fi
attention() {
  "$PY" tools/benchmark_attention.py "$@" --json "$OUT/attention.json" |
    tee "$OUT/attention.md"
}
export -f attention
step attention 90 attention "${ATTN[@]}"

# ---------------------------------------------------------------------------
# 3. the CUDA-marked tests (they skip cleanly without a GPU)
# ---------------------------------------------------------------------------
# (only the files that hold such tests: the others need not even import)
CUDA_TESTS=$(grep -l 'pytest.mark.cuda' tests/test_*.py)
# shellcheck disable=SC2086
step tests 150 "$PY" -m pytest -m cuda -q -rs --junitxml="$OUT/tests.xml" \
    $CUDA_TESTS

# ---------------------------------------------------------------------------
# 4. 50 iterations of ViT-B/16 BEiT v2 pretraining, float16 then bfloat16
# ---------------------------------------------------------------------------
# The recipe as it is except: the demo images (generated under data/demo)
# for ImageNet, a random VQ-KD tokenizer for the trained one (same
# architecture, an initialised codebook, loaded strictly as the recipe
# loads its checkpoint), an iteration loop of TRAIN_ITERS with a short
# warmup, and no checkpoints. --dry-run: the mini architecture at 64 px,
# batch 4, 2 iterations.
train_config() {
  "$PY" - "$WORK" "$MODE" "${TRAIN_BATCH:-256}" "${TRAIN_ITERS:-50}" \
      "${TRAIN_WORKERS:-8}" <<'EOF'
import sys
import torch
sys.path.insert(0, 'tools')
import benchmark as bench  # noqa: E402
from beit_plugin.models.tokenizers import VQKDTokenizer  # noqa: E402

work, mode = sys.argv[1], sys.argv[2]
batch, iters, workers = (int(v) for v in sys.argv[3:6])
if mode == 'dry':
    arch, img, batch, iters, workers = 'mini', 64, 4, 2, 0
else:
    arch, img = None, 224
cfg = bench.load_config(bench.JOBS['pretrain-v2'].ours)
bench.adapt_pretrain(cfg, 'ours', 2, img, bench.ARCHS.get(arch))
tok = cfg.model.target_generator
torch.manual_seed(0)
tokenizer = VQKDTokenizer(**{k: v for k, v in tok.items()
                             if k not in ('type', 'frozen', 'init_cfg')})
path = f'{work}/vqkd_random.pth'
torch.save({'state_dict': tokenizer.state_dict()}, path)
tok.update(frozen=True, init_cfg=dict(type='Pretrained', checkpoint=path))
cfg.train_dataloader.update(batch_size=batch, num_workers=workers,
                            persistent_workers=workers > 0)
cfg.train_dataloader.dataset.update(type='beit_plugin.DemoImageNet',
                                    data_root='data/demo/imagenet')
cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters)
cfg.param_scheduler = [dict(type='LinearLR', start_factor=1e-3,
                            by_epoch=False, begin=0, end=min(10, iters))]
cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                    interval=iters + 1, save_last=False)
cfg.default_hooks.logger = dict(type='LoggerHook',
                                interval=1 if iters < 20 else 10)
cfg.log_processor = dict(by_epoch=False)
cfg.dump(f'{work}/train_v2.py')
print(f'{work}/train_v2.py: ViT arch {arch or "base"}, {img} px, batch '
      f'{batch}, {iters} iterations, {workers} workers; {bench.RANDOM_TOKENIZERS}')
EOF
}

train_summary() {  # NAME: the figures of $WORK/train_NAME's scalars.json
  "$PY" - "$WORK/train_$1" "$WORK/train_$1.json" <<'EOF'
import glob, json, math, statistics, sys
work_dir, out = sys.argv[1], sys.argv[2]
files = glob.glob(f'{work_dir}/*/vis_data/scalars.json')
rows = [json.loads(line) for f in files for line in open(f)] if files else []
rows = [r for r in rows if 'loss' in r]
summary = dict(logged=len(rows))
if rows:
    times = [r['time'] for r in rows[1:]] or [rows[0]['time']]
    summary.update(
        last_iter=rows[-1]['iter'], first_loss=rows[0]['loss'],
        last_loss=rows[-1]['loss'],
        finite=all(math.isfinite(r['loss']) for r in rows),
        s_per_iter=statistics.median(times),
        data_s_per_iter=statistics.median(r['data_time'] for r in rows),
        # (MMEngine logs CUDA's max allocated memory, nothing on a CPU)
        memory_mib=max((r['memory'] for r in rows if 'memory' in r),
                       default=None))
print(json.dumps(summary))
json.dump(summary, open(out, 'w'))
EOF
}

train() {  # NAME DTYPE
  rm -rf "$WORK/train_$1"
  "$PY" tools/train.py "$WORK/train_v2.py" --work-dir "$WORK/train_$1" \
      --cfg-options "optim_wrapper.dtype=$2" &&
    train_summary "$1"
}

export -f train_config train_summary train
step train-config 90 train_config
step train-fp16 150 train fp16 float16
step train-bf16 150 train bf16 bfloat16

# ---------------------------------------------------------------------------
# 5. the benchmark, ours vs peer; 6. resolution / batch sweep
# ---------------------------------------------------------------------------
JOBS=pretrain-v1,pretrain-v2,finetune,upernet-512,upernet-640,pipeline-v1,pipeline-v2
if [ "$MODE" = gpu ]; then
  BENCH=(--device cuda --amp bf16 --profile 10)
  SWEEP=(--device cuda --amp bf16 --img-size 224,384,512,640 --batch 16,64
         --steps 5 --warmup 2)
else
  BENCH=(--demo --device cpu --amp bf16 --profile 5)
  SWEEP=(--device cpu --arch mini --img-size 32,64 --batch 2,4 --steps 2
         --warmup 1)
fi
bench() {  # NAME ARGS...: stdout (the tables) to $OUT/NAME.md
  local name=$1
  shift
  "$PY" tools/benchmark.py "$@" --json "$OUT/$name.json" |
    tee "$OUT/$name.md"
}
export -f bench
step benchmark 260 bench benchmark --jobs "$JOBS" "${BENCH[@]}"
step sweep 150 bench sweep --jobs finetune "${SWEEP[@]}"

# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------
"$PY" - "$WORK" "$OUT" "$MODE" "$(($(date +%s) - START))" <<'EOF'
import csv, json, os, sys
work, out, mode, seconds = sys.argv[1:5]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


steps = [dict(name=n, status=s, seconds=int(t)) for n, s, t in
         csv.reader(open(f'{work}/steps.tsv'), delimiter='\t')]
summary = dict(mode=mode, seconds=int(seconds), steps=steps,
               environment=load(f'{work}/env.json'),
               matmul=load(f'{work}/matmul.json'),
               train={n: load(f'{work}/train_{n}.json')
                      for n in ('fp16', 'bf16')})
bench = load(f'{out}/benchmark.json')
# the step's counted FLOPs per second as a share of the bf16 matmul's rate
# (the issue's target: 40 % for the ViT-B/16 v2 pretraining step)
peak = (summary['matmul'] or {}).get('tflops')


def share(rate):
    return rate / peak if rate is not None and peak else None


if bench:
    summary['benchmark'] = [
        dict(job=r['job'], img_size=r['img_size'], batch=r['batch'],
             ours_ms=r['ours']['ms_per_step'], peer_ms=r['peer']['ms_per_step'],
             ratio_ms=r['ratio_ms'], ours_mib=r['ours']['peak_mib'],
             peer_mib=r['peer']['peak_mib'], ratio_mem=r['ratio_mem'],
             ours_tflops=r['ours']['tflops'], peer_tflops=r['peer']['tflops'],
             ratio_flops=r['ratio_flops'],
             ours_share_of_matmul=share(r['ours']['tflops']),
             peer_share_of_matmul=share(r['peer']['tflops']))
        for r in bench['steps']]
json.dump(summary, open(f'{out}/summary.json', 'w'), indent=1)
print(f'== summary ({mode}, {seconds} s):')
for s in steps:
    print(f"   {s['name']:15s} {s['status']:>8s} {s['seconds']:4d} s")
print(json.dumps({k: summary[k] for k in ('matmul', 'train')}, indent=1))
for r in summary.get('benchmark', []):
    rate, part = r['ours_tflops'], r['ours_share_of_matmul']
    print(f"   {r['job']} {r['img_size']} px batch {r['batch']}: ms ours/peer "
          f"{r['ratio_ms']:.2f}, memory {r['ratio_mem'] or float('nan'):.2f}"
          + (f', ours {rate:.3g} TFLOP/s' if rate is not None else '')
          + (f' = {part:.1%} of the bf16 matmul' if part is not None else ''))
print('files:', ', '.join(sorted(os.listdir(out))))
EOF
# let tee write the last lines before the script returns
exec >&- 2>&-
wait "$TEE" 2>/dev/null || true
