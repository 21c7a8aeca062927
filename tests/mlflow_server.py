"""A real ``mlflow server`` process on loopback for tests (sqlite backend, local artifact root).

Use the session-scoped fixture from any test module::

    from tests.mlflow_server import mlflow_server_uri  # noqa: F401  (re-exported fixture)

or start one by hand with :func:`start_mlflow_server` / :class:`MlflowServer` (a context manager).

The server runs with ``--workers 1`` and ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` so it does not spawn
the job-executor (huey) processes that make ``mlflow server`` 3.17 heavy on a small CI box. It is started in
its own process group so that the uvicorn worker it forks is stopped with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mlflow_executable() -> list[str]:
    candidate = Path(sys.executable).with_name("mlflow")
    if candidate.exists():
        return [str(candidate)]
    return [sys.executable, "-m", "mlflow"]


class MlflowServer:
    """An ``mlflow server`` subprocess; ``uri`` is ``http://127.0.0.1:<port>`` once :meth:`start` returns."""

    def __init__(self, root: Path, *, port: int | None = None, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.timeout_s = timeout_s
        self.uri = f"http://127.0.0.1:{self.port}"
        self.startup_seconds: float | None = None
        self.log_path = self.root / "mlflow_server.log"
        self._proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        artifacts = self.root / "artifacts"
        artifacts.mkdir(exist_ok=True)
        cmd = [
            *_mlflow_executable(),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            # Proxied artifacts: clients upload through the server (``mlflow-artifacts:/``), as on K8s.
            "--artifacts-destination",
            artifacts.as_uri(),
        ]
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop())
        started = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except Exception:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with code {self._proc.returncode} before it was ready; "
                    f"log {self.log_path}:\n{self.log_text()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise TimeoutError(
            f"mlflow server at {self.uri} not healthy after {self.timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_text()[-4000:]}"
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # The process group holds only what this server started (the CLI and its uvicorn worker).
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_mlflow_server(root: Path, **kwargs) -> MlflowServer:
    """Start a server rooted at ``root`` (sqlite DB + artifacts inside it); call ``.stop()`` when done."""
    return MlflowServer(root, **kwargs).start()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real MLflow tracking server for the whole test session."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server_uri(mlflow_server: MlflowServer) -> str:
    """``http://127.0.0.1:<port>`` of the session's MLflow server."""
    return mlflow_server.uri
