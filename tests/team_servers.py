"""The team infrastructure of docs/team.md, started for real on 127.0.0.1.

PostgreSQL 16 from `pgserver` (Unix socket, no TCP port), an S3 endpoint from
`moto_server`, and `mlflow server` with basic-auth on top of both, launched with the
docs/team.md's command. Every process runs in its own process group and is stopped by
`stop()` (SIGTERM, then SIGKILL after a bound), so a failed test leaves none behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3
import pgserver

BIN = Path(sys.executable).parent
ADMIN = ("admin", "admin-password-for-tests")
# moto takes any keys; these are distinctive, so a test can search for the secret one.
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "AKIATEAMTESTS0000000",
    "AWS_SECRET_ACCESS_KEY": "s3-secret-key-for-tests-7f3a",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_TIMEOUT_S = 120
# docs/team.md's server setting: no job runner (a Huey consumer per MLflow GenAI job type,
# ~20 CPU-seconds per server start, for jobs this pipeline never submits).
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(ready: Callable[[], bool], what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT_S} s\n{tail}")


def answers(url: str) -> bool:
    """Whether an HTTP server answers at `url`, whatever its status code."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def request(url: str, body: dict | None = None, auth: tuple[str, str] | None = None, timeout: float = 30) -> dict:
    """One JSON request with optional basic auth; HTTPError for a non-2xx answer."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=timeout) as response:
        text = response.read()
    return json.loads(text) if text.strip() else {}


class Service:
    """A server process in its own process group, with its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name, self.command, self.env, self.cwd = name, command, env, cwd
        self.log = cwd / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self, ready: Callable[[], bool]) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for(ready, self.name, self.process, self.log)
        except BaseException:
            self.stop()
            raise

    def send(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def freeze(self) -> None:
        """SIGSTOP: requests wait unanswered, so a client's next call cannot finish until `thaw`."""
        self.send(signal.SIGSTOP)

    def thaw(self) -> None:
        self.send(signal.SIGCONT)

    def stop(self, crash: bool = False) -> None:
        """SIGTERM (SIGKILL for `crash`, or after 20 s), woken first if frozen."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig in (signal.SIGKILL,) if crash else (signal.SIGTERM, signal.SIGKILL):
            self.send(sig)
            self.thaw()
            try:
                self.process.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue


class Postgres:
    """pgserver's embedded PostgreSQL 16 in `folder`; stop() and start() keep its data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server = None

    def start(self) -> None:
        self.server = pgserver.get_server(self.folder, cleanup_mode="stop")

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None

    def create_database(self, name: str) -> None:
        self.server.psql(f"CREATE DATABASE {name};")

    def query(self, database: str, sql: str) -> str:
        psql = Path(pgserver.__file__).parent / "pginstall/bin/psql"
        out = subprocess.run(
            [str(psql), "-h", str(self.folder), "-U", "postgres", "-d", database, "-tAc", sql],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip()

    def uri(self, database: str) -> str:
        # docs/team.md's form; host=<folder> makes psycopg2 use the Unix socket in that folder.
        return f"postgresql+psycopg2://postgres:@/{database}?host={self.folder}"


class TeamServers:
    """PostgreSQL + S3 + `mlflow server --app-name basic-auth`, as docs/team.md runs them."""

    bucket = "team-bucket"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.postgres = Postgres(folder / "pg")
        self.s3_endpoint = f"http://127.0.0.1:{free_port()}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        self.moto = Service(
            "moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", self.s3_endpoint.rsplit(":", 1)[1]], env, folder
        )
        (folder / "auth.ini").write_text(
            "[mlflow]\n"
            "default_permission = EDIT\n"
            f"database_uri = {self.postgres.uri('mlflow_auth')}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n"
        )
        server_env = (
            env
            | S3_KEYS
            | SERVER_ENV
            | {
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                "MLFLOW_AUTH_CONFIG_PATH": str(folder / "auth.ini"),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": "secret-for-tests",
                "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
            }
        )
        command = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            self.postgres.uri("mlflow"),
            "--artifacts-destination",
            f"s3://{self.bucket}/mlflow",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.mlflow = Service("mlflow", command, server_env, folder)
        self.users: dict[str, str] = {}

    def start(self) -> None:
        self.postgres.start()
        for database in ("mlflow", "mlflow_auth"):
            self.postgres.create_database(database)
        self.moto.start(lambda: answers(f"{self.s3_endpoint}/moto-api/"))
        self.s3().create_bucket(Bucket=self.bucket)
        self.start_mlflow()

    def start_mlflow(self) -> None:
        self.mlflow.start(lambda: answers(f"{self.url}/health"))

    def stop(self) -> None:
        for step in (self.mlflow.stop, self.moto.stop, self.postgres.stop):
            try:
                step()
            except Exception as err:  # stop the others whatever happens to one
                print(f"stopping {step}: {err}", file=sys.stderr)

    def left_running(self) -> list[str]:
        """What `stop()` failed to stop: should be nothing."""
        left = [s.name for s in (self.mlflow, self.moto) if s.process is not None and s.process.poll() is None]
        if (self.postgres.folder / "postmaster.pid").exists():
            left.append("postgres")
        return left

    def s3(self):
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_KEYS["AWS_DEFAULT_REGION"],
        )

    def objects(self, prefix: str = "") -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def add_user(self, name: str, password: str) -> None:
        request(f"{self.url}/api/2.0/mlflow/users/create", {"username": name, "password": password}, auth=ADMIN)
        self.users[name] = password

    def api(self, path: str, body: dict | None = None, user: str | None = None) -> dict:
        auth = (user, self.users[user]) if user else ADMIN
        return request(f"{self.url}/api/2.0/mlflow/{path}", body, auth=auth)

    def client_env(self, user: str, password: str | None = None) -> dict[str, str]:
        """What a team member exports: the server and their login (no S3 keys: artifacts go through the server)."""
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": self.users[user] if password is None else password,
        }
