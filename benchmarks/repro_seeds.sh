#!/bin/bash
# The default `dvc repro` of one dataset, one fresh clone per seed, on the dev archives; one JSON
# line per run appended to OUT after each (test metrics, the run's images/s, epoch times and
# per-epoch validation accuracy from its MLflow run).
#   DATASET=cifar100 benchmarks/repro_seeds.sh COMMIT OUT.jsonl SEED...
# Needs ../shared/data (CIFAR-10's dev archive) and the CIFAR-100 dev archive that
# ../shared/data/cifar100_dev.py writes to ~/.cache/cifar-pipeline; uses the active venv.
# What wrote benchmarks/results/repro_seeds/ and benchmarks/results/sweeps/cifar100-recipe/confirm.jsonl.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COMMIT=$1; OUT=$(realpath "$2"); shift 2
DATASET=${DATASET:-cifar10}
C10=$(cd "$ROOT/.." && pwd)/shared/data/cifar-10-dev-binary.tar.gz
C100=$HOME/.cache/cifar-pipeline/cifar-100-dev-binary.tar.gz
export DVC_NO_ANALYTICS=1
for seed in "$@"; do
  dir=${TMPDIR:-/tmp}/repro-seeds-$DATASET-$seed
  rm -rf "$dir"; git clone -q "$ROOT" "$dir" && cd "$dir" && git checkout -q "$COMMIT"
  sed -i "s#https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz#$C10#; s#c32a1d4ab5d03f1284b67883e8d87530#ea02fb22a8ce83a9d0f1da71bb304e12#" params.yaml
  sed -i "s#https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz#$C100#; s#03b5dce01913d631647c71ecec9e9cb8#40269c99f764201faa1701a1a15cab92#" params.yaml
  sed -i "s#^datasets: .*#datasets: [$DATASET]#; s/^  seed: 42\( *# Python\)/  seed: $seed\1/; s#formats: \[.*\]#formats: []#" params.yaml
  start=$(date +%s); dvc repro > repro.log 2>&1; rc=$?; end=$(date +%s)
  python - "$COMMIT" "$DATASET" "$seed" "$rc" "$((end - start))" >> "$OUT" <<'PY'
import json, sys
from pathlib import Path
from mlflow.tracking import MlflowClient
commit, dataset, seed, rc, wall = sys.argv[1:]
out = {"commit": commit, "dataset": dataset, "seed": int(seed), "rc": int(rc), "wall_s": int(wall)}
metrics = Path(f"metrics/{dataset}.json")
out["metrics"] = json.loads(metrics.read_text()) if metrics.exists() else None
try:
    run_id = json.loads(Path(f"models/{dataset}/mlflow_run.json").read_text())["run_id"]
    client = MlflowClient("sqlite:///mlflow.db")
    out["recipe"] = client.get_run(run_id).data.params.get("recipe")
    for key in ("images_per_second", "epoch_time_s", "val_accuracy"):
        out[key] = [round(m.value, 4) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
except Exception as err:
    out["mlflow_error"] = str(err)
print(json.dumps(out))
PY
done
