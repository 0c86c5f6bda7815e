#!/usr/bin/env bash
# Set up difftrain in ./.venv on a fresh machine:  bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first: by default the CPU build (on this machine's disk); an unpinned torch would pull a CUDA build.
pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -r requirements.txt -c constraints.txt
pip install -q --no-deps -r requirements-data.txt
# Built-in fashion_mnist comes from Debian; optional (only tests that need it skip without it).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
    || echo "note: dataset-fashion-mnist not installed; --dataset_name fashion_mnist will say how to get it"
fi
echo "difftrain is set up: . .venv/bin/activate"
