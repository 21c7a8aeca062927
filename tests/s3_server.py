"""Loopback S3 (a real ``moto_server`` process) and MLflow tracking server for tests.

Reuse from any test module (``tests/`` is on ``sys.path`` under pytest)::

    from s3_server import moto_s3_server, mlflow_server

    def test_something(tmp_path, monkeypatch):
        with moto_s3_server(bucket="medloc-test") as s3:
            for key, value in s3.env.items():
                monkeypatch.setenv(key, value)       # boto3 / s3fs / MLflow now talk to the loopback server
            with mlflow_server(tmp_path / "mlflow", artifacts_destination=s3.uri("mlflow"), env=s3.env) as ml:
                ...  # ml.tracking_uri == "http://127.0.0.1:<port>"

or as pytest fixtures (import them into the test module: ``from s3_server import s3, mlflow_s3  # noqa: F401``).

Both servers listen on 127.0.0.1 on a free port, are stopped (terminate, then kill) when the block exits, and
keep their logs in a temp file that is printed into the error when startup fails.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN_DIR = Path(sys.executable).parent
#: Credentials moto accepts (any non-empty value works); never real keys.
FAKE_KEY_ID = "testing"
FAKE_SECRET = "testing"
REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Return once ``url`` answers below 500; raise if ``proc`` exits first or ``timeout_s`` passes (its log in
    the error)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def _process(argv: list[str], env: Mapping[str, str], ready_url: str, timeout_s: float) -> Iterator[Path]:
    with tempfile.NamedTemporaryFile(prefix="medloc-server-", suffix=".log", delete=False) as fh:
        log = Path(fh.name)
    with log.open("wb") as out:
        # Own process group, so that worker processes (mlflow/uvicorn) go down with the server.
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
    try:
        wait_http(ready_url, proc, log, timeout_s)
        yield log
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(timeout=5)
        log.unlink(missing_ok=True)


@dataclass
class S3Server:
    """A running loopback S3 endpoint with one bucket.

    ``env`` holds the variables that point boto3, s3fs and MLflow (``MLFLOW_S3_ENDPOINT_URL``) at it, with
    fake credentials; ``stack_env`` the ``MEDLOC_S3_*`` ones ``infra/stacks.py`` reads for its ZenML secret.
    """

    endpoint_url: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)
    stack_env: dict[str, str] = field(default_factory=dict)

    def uri(self, prefix: str = "") -> str:
        """``s3://<bucket>/<prefix>``."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def client(self) -> Any:
        """A boto3 S3 client for this endpoint."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=FAKE_KEY_ID,
            aws_secret_access_key=FAKE_SECRET,
            region_name=REGION,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """All object keys under ``prefix`` in the bucket, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)


@contextlib.contextmanager
def moto_s3_server(bucket: str = "medloc-test", *, timeout_s: float = 60.0) -> Iterator[S3Server]:
    """Start ``moto_server`` on 127.0.0.1:<free port>, create ``bucket``, yield it, stop it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [str(BIN_DIR / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with _process(argv, {}, f"{endpoint}/moto-api/", timeout_s):
        server = S3Server(
            endpoint_url=endpoint,
            bucket=bucket,
            env={
                "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ENDPOINT_URL_S3": endpoint,
                "MLFLOW_S3_ENDPOINT_URL": endpoint,
                # Never read a developer's ~/.aws files in tests.
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            },
            stack_env={
                "MEDLOC_S3_ACCESS_KEY_ID": FAKE_KEY_ID,
                "MEDLOC_S3_SECRET_ACCESS_KEY": FAKE_SECRET,
                "MEDLOC_S3_ENDPOINT_URL": endpoint,
                "MEDLOC_S3_BUCKET": bucket,
            },
        )
        server.client().create_bucket(Bucket=bucket)
        yield server


@dataclass
class MlflowServer:
    """A running ``mlflow server``; ``tracking_uri`` is its ``http://127.0.0.1:<port>`` URL."""

    tracking_uri: str
    backend_store_uri: str
    artifacts_destination: str


@contextlib.contextmanager
def mlflow_server(
    state_dir: str | os.PathLike[str],
    *,
    artifacts_destination: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` (SQLite backend in ``state_dir``, proxied artifacts at ``artifacts_destination``).

    One worker and no job executor, to stay light on small CI machines. ``env`` is added to the server's
    environment (pass ``S3Server.env`` for an ``s3://`` destination).
    """
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    backend = f"sqlite:///{state.resolve() / 'mlflow.db'}"
    argv = [
        str(BIN_DIR / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts_destination,
    ]
    server_env = {**(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with _process(argv, server_env, f"http://127.0.0.1:{port}/health", timeout_s):
        yield MlflowServer(f"http://127.0.0.1:{port}", backend, artifacts_destination)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """Module-scoped loopback S3 server with bucket ``medloc-test``."""
    with moto_s3_server("medloc-test") as server:
        yield server


@pytest.fixture(scope="module")
def mlflow_s3(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """Module-scoped MLflow server whose artifacts go to ``s3://medloc-test/mlflow`` on the loopback S3."""
    with mlflow_server(
        tmp_path_factory.mktemp("mlflow"), artifacts_destination=s3.uri("mlflow"), env=s3.env
    ) as server:
        yield server
