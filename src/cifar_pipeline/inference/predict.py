"""`cifar-predict MODEL INPUT...`: top-5 class names and probabilities for each image.

MODEL: `models:/cifar10@champion`, `models:/<name>/<version>`, `runs:/<run id>/model`, a
model folder (`models/cifar10`), a `.keras` file, or an exported model (`exports/cifar10/`: the
`saved_model` folder, a `.tflite` or `.onnx` file). INPUT: PNG/JPEG files, folders of them,
`.npy` uint8 arrays (N, 32, 32, 3), official CIFAR binary batches (`.bin`).
The store is the project's `mlflow.db` (run it in the project root) or MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from cifar_pipeline.core.errors import PipelineError, redact
from cifar_pipeline.inference.loading import load_model
from cifar_pipeline.inference.user_images import read_inputs

TOP = 5


def top_k(probabilities: np.ndarray, names: list[str], k: int = TOP) -> list[list[tuple[str, float]]]:
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(names[j], float(row[j])) for j in picks] for row, picks in zip(probabilities, order, strict=True)]


def render(inputs: list[str], ranked: list[list[tuple[str, float]]], form: str) -> str:
    if form == "json":
        return json.dumps(
            [
                {"input": name, "top5": [{"class": c, "probability": round(p, 6)} for c, p in picks]}
                for name, picks in zip(inputs, ranked, strict=True)
            ],
            indent=2,
        )
    if form == "csv":
        lines: list[list[str]] = [["input", "rank", "class", "probability"]]
        for name, picks in zip(inputs, ranked, strict=True):
            lines += [[name, str(rank), c, f"{p:.6f}"] for rank, (c, p) in enumerate(picks, start=1)]
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(lines)
        return out.getvalue().rstrip("\n")
    width = max((len(n) for n in inputs), default=5)
    rows = [f"{'input':<{width}}  top-5 (probability)"]
    for name, picks in zip(inputs, ranked, strict=True):
        rows.append(f"{name:<{width}}  " + "  ".join(f"{c} {p:.3f}" for c, p in picks))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cifar-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, a folder, .keras, saved_model/, .tflite, .onnx",
    )
    parser.add_argument(
        "inputs", nargs="+", type=Path, help="images, folders of images, .npy arrays, CIFAR .bin batches"
    )
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as \udcXX, not a traceback
        stream.reconfigure(errors="backslashreplace")
    try:
        # stdout carries only the result (JSON/CSV users pipe it): progress bars go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            model = load_model(args.model)
            inputs = read_inputs(args.inputs, len(model.class_names))
            ranked = top_k(model.predict(inputs.images), model.class_names)
    except PipelineError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 2
    try:
        print(render(inputs.names, ranked, args.format), flush=True)
    except BrokenPipeError:  # `| head -1`: the reader has what it wanted; exit as a SIGPIPE'd tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 128 + signal.SIGPIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
