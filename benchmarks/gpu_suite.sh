#!/usr/bin/env bash
# Every GPU check of avanon in one prepared run (under 8 minutes on one H100/H200), for whenever a GPU is lent:
# the CUDA tests (streaming anonymizer, trainer AMP / channels_last / resume, HM-LO on CUDA), the realistic
# pipeline benchmark (stream vs per-image vs batch-1, generator busy share), the trainer throughput benchmark
# (fp32 vs AMP, channels_last) and a one-GPU `avanon run --gpus` of a tiny study. Needs an environment with
# avanon and its test extras installed (README set-up). Results and logs go to $OUT (default ./gpu_suite_out).
#
#   bash benchmarks/gpu_suite.sh            # everything
#   QUICK=1 bash benchmarks/gpu_suite.sh    # the tests only
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_suite_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, remember failures
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || status=1
}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

step cuda_tests 240 python -m pytest -q -x -p no:cacheprovider \
  tests/test_stream.py -k "cuda or realistic" \
  tests/test_training_gpu_features.py \
  tests/test_realistic_anonymizer.py
[ "${QUICK:-0}" = 1 ] && exit $status
step realistic_pipeline 150 python benchmarks/realistic_pipeline.py --device cuda --images 32 --workers 8 \
  --regions body,face --json "$OUT/realistic_pipeline.json"
step realistic_batching_hmlo 45 python benchmarks/realistic_batching.py --devices cuda --gpu-instances 32 \
  --histogram hmlo --hmlo-steps 5 --json "$OUT/realistic_batching_hmlo.json"
step train_throughput 90 python benchmarks/train_throughput.py --gpu --json "$OUT/train_throughput_gpu.json"
step study_gpus 60 python -m pytest -q -x -p no:cacheprovider tests/test_study_gpus.py
echo "gpu_suite: $([ $status = 0 ] && echo all passed || echo FAILURES, see $OUT/*.log)"
exit $status
