#!/bin/bash
# README command 1 (`dvc repro`) timed in a fresh clone, with data.<d>.url/md5 pointed at the dev archives.
#   benchmarks/dvc_repro.sh [CLONE_DIR] > log
# Needs ../shared/data (CIFAR-10's dev archive) and the CIFAR-100 dev archive that
# ../shared/data/cifar100_dev.py writes to ~/.cache/cifar-pipeline. Prints a log with [Ns] stamps.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLONE=${1:-/tmp/cifar-pipeline-repro}
C10=$(cd "$ROOT/.." && pwd)/shared/data/cifar-10-dev-binary.tar.gz
C100=$HOME/.cache/cifar-pipeline/cifar-100-dev-binary.tar.gz
rm -rf "$CLONE" && git clone -q "$ROOT" "$CLONE" && cd "$CLONE"
echo "# README command 1 in a fresh clone of the commit below, data urls pointed at the dev archives; [Ns]: seconds since dvc started"
echo "commit $(git rev-parse HEAD)"; lscpu | grep "Model name"; date
python3 -m venv .venv && . .venv/bin/activate && pip install -q -r requirements.txt >/dev/null
sed -i "s#https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz#$C10#; s#c32a1d4ab5d03f1284b67883e8d87530#ea02fb22a8ce83a9d0f1da71bb304e12#" params.yaml
sed -i "s#https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz#$C100#; s#03b5dce01913d631647c71ecec9e9cb8#40269c99f764201faa1701a1a15cab92#" params.yaml
START=$SECONDS
dvc repro 2>&1 | grep --line-buffered -v -E "oneDNN|cuda|cuInit|absl::InitializeLog|rebuild TensorFlow" |
  while IFS= read -r line; do echo "[$((SECONDS - START))s] $line"; done
echo "total $((SECONDS - START)) s"; date
cat metrics/*.json
