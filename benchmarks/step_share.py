"""Where the fast network's train step goes: its share of this machine's peak, side by side.

    python -m benchmarks.step_share            # ~7 minutes on 2 cores
    python -m benchmarks.step_share --smoke    # the code paths only (what the tests run)

Each configuration is the airbench94 recipe's network and optimizer trained on random uint8 images by the train
stage's own input pipeline and `fit`, in its own process, which also measures the matmul and
conv peaks in float32 and bfloat16 (`train_speed.py`); *of peak* is the step's achieved
GFLOP/s (3x the forward pass) against the peak of its own compute dtype. One variable
changes at a time from the first row, so each row's difference is that variable's cost.
Lookahead (a callback of the train stage's `fit`) is not in these steps.
Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, warm_up
from benchmarks.run import measure_training

FAST = {"pipeline": "ours", "network": "fast", "overrides": ["recipe=airbench94"]}
CONFIGS: list[tuple[str, dict, dict[str, str]]] = [
    ("airbench94 recipe (batch 1024)", {"batch_size": 1024}, {}),
    ("airbench94 recipe, batch 128", {"batch_size": 128}, {}),
    ("fast recipe (batch 128)", {"batch_size": 128, "overrides": ["recipe=fast"]}, {}),
    (
        "airbench94, no whitening bias (no backward pass through the first conv)",
        {"batch_size": 1024, "overrides": ["recipe=airbench94", "train.model.whiten_bias_epochs=0"]},
        {},
    ),
    ("airbench94, no augmentation (the input pipeline's share)", {"batch_size": 1024, "augment": False}, {}),
    ("airbench94, float32", {"batch_size": 1024, "mixed_precision": False}, {}),
    ("airbench94, XLA jit_compile", {"batch_size": 1024, "jit_compile": True}, {}),
    (
        "airbench94, train.deterministic (op determinism, float32)",
        {"batch_size": 1024, "mixed_precision": False, "deterministic": True},
        {},
    ),
]


def markdown(results: dict) -> str:
    m = results["machine"]
    first = results["runs"][0]
    peaks = first["peak_gflops"]
    lines = [
        "# The fast network's train step against the machine's peak",
        "",
        f"Written by `python -m benchmarks.step_share` on {results['date']}. Machine: {m['cpu']}, {m['cores']} cores, "
        f"{' '.join(m['simd'])}. {results['images']} random images, {results['epochs']} epochs per row; medians "
        "over epochs 2..N. Peaks in the first row's process: matmul "
        f"{peaks['matmul']:.0f} / conv {peaks['conv']:.0f} GFLOP/s float32, matmul "
        f"{peaks.get('matmul_bfloat16', 0):.0f} / conv {peaks.get('conv_bfloat16', 0):.0f} GFLOP/s bfloat16 "
        f"(0: not measured, no native bf16). Training cost {first['train_mflop_per_image']:.0f} "
        "MFLOP per image (3x forward).",
        "",
        "| setup | compute dtype | steady img/s | epoch wall img/s | achieved GFLOP/s | of peak (own dtype) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['name']} | {r['dtype_policy']} | {r['steady_img_s']:.0f} | {r['epoch_wall_img_s']:.0f} "
            f"| {r['achieved_gflops']:.0f} | {r['fraction_of_peak']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code, measures nothing useful")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/step_share")
    parser.add_argument("--only", nargs="+", metavar="WORDS", help="only the setups whose name holds one of these")
    args = parser.parse_args()
    images, epochs = (64, 2) if args.smoke else (8192, 3)
    configs = CONFIGS[:2] if args.smoke else CONFIGS
    if args.only:
        configs = [c for c in configs if any(word in c[0] for word in args.only)]
    if not args.smoke:
        warm_up(20)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "images": images, "epochs": epochs}
    results["runs"] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, config, env in configs:
        batch = min(config["batch_size"], images // 2) if args.smoke else config["batch_size"]
        run = measure_training(name, FAST | config | {"images": images, "epochs": epochs, "batch_size": batch}, env)
        results["runs"].append(run)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        (args.out / "results.md").write_text(markdown(results))
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
