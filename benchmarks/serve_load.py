"""`mlflow models serve` under load: the Keras flavour (what the project logged before issue 31)
and the project's served model, the same trained `.keras` file, side by side in one run.

    python -m benchmarks.serve_load                      # a tiny untrained model: the servers' own cost
    python -m benchmarks.serve_load --project /path/to/a/project/that/ran/dvc/repro   # its trained model
    python -m benchmarks.serve_load --smoke              # the tiny model, 3 s of load (the code paths only)

Each server runs as the README starts it (`--env-manager local`, access log off) against a
temporary MLflow store; for `--seconds`, 8 client threads (half sending 1 image, half 64 per
request) post as fast as answers come. Then, on the served model only, hostile requests
and a check that the answers are still right. Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import ROOT, machine

CLIENTS = 8
BATCHES = (1, 64)  # half the clients each


def log_models(keras_file: Path, names: list[str], store: Path) -> dict[str, str]:
    """The same model logged twice: as the Keras flavour and as the project logs it now."""
    import keras
    import mlflow

    from cifar_pipeline.tracking.logged_model import log_model

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("serve-load")
    model = keras.models.load_model(keras_file)
    sample = np.zeros((2, 32, 32, 3), np.uint8)
    with mlflow.start_run():
        keras_flavour = mlflow.keras.log_model(model, name="keras").model_uri
        served = log_model(model, sample, {"names": names, "dataset": "-", "label_mode": "-"})
    return {"Keras flavour (before)": keras_flavour, "served model (now)": served}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, uri: str, store: Path, workers: int, log: Path) -> None:
        self.port = free_port()
        env = os.environ | {
            "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
            "UVICORN_ACCESS_LOG": "false",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        command = ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-p", str(self.port)]
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [*command, "--workers", str(workers)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}/invocations"
        deadline = time.monotonic() + 300
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2).close()
            return True
        except OSError:
            return False

    def memory_mb(self) -> float:
        tree = [psutil.Process(self.process.pid)]
        tree += tree[0].children(recursive=True)
        return sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})  # noqa: S310 (http only)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def body(images: np.ndarray) -> bytes:
    return json.dumps({"inputs": images.tolist()}).encode()


def load(server: Server, images: np.ndarray, seconds: float) -> dict:
    """CLIENTS threads posting for `seconds`; latencies per batch size, errors, images/s, peak memory."""
    bodies = {n: body(images[:n]) for n in BATCHES}
    latencies: dict[int, list[float]] = {n: [] for n in BATCHES}
    errors = [0]
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        while time.monotonic() < stop:
            start = time.perf_counter()
            status, _ = post(server.url, bodies[n])
            if status != 200:
                errors[0] += 1
            latencies[n].append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(BATCHES[i % 2],)) for i in range(CLIENTS)]
    peak, start = server.memory_mb(), time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, server.memory_mb())
        time.sleep(0.2)
    wall = time.monotonic() - start
    row = {"requests": sum(map(len, latencies.values())), "errors": errors[0], "peak_memory_mb": round(peak)}
    row["images_per_s"] = round(sum(n * len(v) for n, v in latencies.items()) / wall, 1)
    for n, values in latencies.items():
        row[f"p50_ms_batch{n}"] = round(1000 * float(np.percentile(values, 50)), 1)
        row[f"p99_ms_batch{n}"] = round(1000 * float(np.percentile(values, 99)), 1)
    return row


def lone(server: Server, images: np.ndarray, requests: int = 50) -> float:
    """Median milliseconds of one-image requests sent one at a time."""
    one = body(images[:1])
    post(server.url, one)
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        post(server.url, one)
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 1)


def hostile(server: Server, images: np.ndarray, expected: np.ndarray) -> dict:
    """Each bad request's status and first line of answer; then whether good answers are still right."""
    one = images[:1].astype(np.int64)
    cases = {
        "5,000 images": body(np.repeat(images[:1], 5000, axis=0)),
        "floats 0-1": json.dumps({"inputs": (one / 255).tolist()}).encode(),
        "values above 255": json.dumps({"inputs": (one + 255).tolist()}).encode(),
        "wrong shape (1, 28, 28)": body(np.zeros((1, 28, 28), np.uint8)),
        "broken JSON": b'{"inputs": [[[[1, 2',
        "empty body": b"",
    }
    answers = {}
    for what, payload in cases.items():
        status, answer = post(server.url, payload)
        try:
            reason = json.loads(answer).get("message", "")
        except ValueError:
            reason = answer.decode(errors="replace")
        answers[what] = {"status": status, "reason": reason.strip().splitlines()[0][:160] if reason else ""}
    status, answer = post(server.url, body(images[:8]))
    still_right = status == 200 and np.allclose(json.loads(answer)["predictions"], expected, atol=1e-5)
    return {"requests": answers, "still_right": bool(still_right)}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# `mlflow models serve` under load",
        "",
        f"Written by `python -m benchmarks.serve_load` on {results['date']}. Machine: {m['cpu']}, {m['cores']} cores. "
        f"Model: {results['model']}. {CLIENTS} clients for {results['seconds']} s, half posting 1 image and half "
        "64 per request; the clients run on the same cores as the server.",
        "",
        "| server | workers | lone 1-image p50 ms | images/s | 1-image p50 / p99 ms | 64-image p50 / p99 ms "
        "| errors | peak memory MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['server']} | {r['workers']} | {r['lone_p50_ms']} | {r['images_per_s']} | "
            f"{r['p50_ms_batch1']} / {r['p99_ms_batch1']} | {r['p50_ms_batch64']} / {r['p99_ms_batch64']} | "
            f"{r['errors']} of {r['requests']} | {r['peak_memory_mb']} |"
        )
    lines += ["", "Hostile requests to the served model:", "", "| request | status | reason |", "|---|---|---|"]
    for what, answer in results["hostile"]["requests"].items():
        lines.append(f"| {what} | {answer['status']} | {answer['reason'].replace('|', '/')} |")
    lines += ["", f"Answers right after them: {results['hostile']['still_right']}.", ""]
    return "\n".join(lines)


def tiny_model(folder: Path) -> Path:
    import keras

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs))
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, out).save(folder / "model.keras")
    return folder / "model.keras"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--project", type=Path, help="a project where `dvc repro` ran: its cifar10 model and test images"
    )
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="the served model's worker counts")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve_load")
    return parser.parse_args()


def serve_each(uris: dict[str, str], workers: list[int], images: np.ndarray, seconds: float, store: Path):
    """Each logged model under load (the served one at each worker count), and the hostile
    requests once, on the served model."""
    runs, hostile_answers = [], None
    for (name, uri), counts in zip(uris.items(), ([1], workers), strict=True):
        for count in counts:
            server = Server(uri, store, count, store / f"serve-{len(runs)}.log")
            try:
                row = {"server": name, "workers": count, "lone_p50_ms": lone(server, images)}
                row |= load(server, images, seconds)
                if name.startswith("served") and hostile_answers is None:
                    expected = json.loads(post(server.url, body(images[:8]))[1])["predictions"]
                    hostile_answers = hostile(server, images, np.asarray(expected))
            finally:
                server.stop()
            runs.append(row)
            print(json.dumps(row))
    return runs, hostile_answers


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        if args.project is None:
            keras_file, names = tiny_model(store), [f"c{i}" for i in range(10)]
            seconds, workers = (3, [1]) if args.smoke else (args.seconds, args.workers)
            images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
            model = "a tiny untrained network"
        else:
            keras_file = args.project / f"models/{args.dataset}/model.keras"
            names = json.loads((args.project / f"models/{args.dataset}/classes.json").read_text())["names"]
            images = np.load(args.project / f"data/split/{args.dataset}/test_images.npy")[:64]
            seconds, workers = args.seconds, args.workers
            model = f"{keras_file} ({keras_file.stat().st_size / 1e6:.1f} MB)"
        runs, hostile_answers = serve_each(log_models(keras_file, names, store), workers, images, seconds, store)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": model,
        "seconds": seconds,
        "runs": runs,
        "hostile": hostile_answers,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
