"""No password or query string of a URL reaches an error line."""

import subprocess
import sys

from cifar_pipeline.core.errors import redact
from team_servers import free_port
from testkit.project import ROOT, environment


def test_passwords_and_query_strings_are_masked_and_the_rest_kept():
    text = (
        "cannot reach http://alice:s3cret@127.0.0.1:5000 (from MLFLOW_TRACKING_URI); "
        "https://mirror.example.org/c.tar.gz?X-Amz-Signature=abc&t=1 refused; sqlite:////tmp/mlflow.db"
    )
    assert redact(text) == (
        "cannot reach http://alice:***@127.0.0.1:5000 (from MLFLOW_TRACKING_URI); "
        "https://mirror.example.org/c.tar.gz?*** refused; sqlite:////tmp/mlflow.db"
    )
    assert (
        redact("http://127.0.0.1:5000/api and user 'alice'@ work") == "http://127.0.0.1:5000/api and user 'alice'@ work"
    )


def test_a_tracking_uri_with_a_password_is_masked_in_the_error_line(tmp_path):
    uri = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "cifar_pipeline.inference.predict", "models:/cifar10@champion", str(tmp_path / "x.png")],
        env=environment() | {"PYTHONPATH": str(ROOT / "src"), "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "http://alice:***@127.0.0.1" in line and "s3cret" not in result.stderr + result.stdout
