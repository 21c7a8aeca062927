"""``mlflow models serve`` of a registered medloc-grounder version, over HTTP on loopback.

The served model is logged from code (no pickle) with the package as ``code_paths``. A request with a base64
image gets boxes (original pixels, inside the image, JSON ``null`` when the answer did not parse); a bad
request gets HTTP 400 with a one-line message and no stack trace; a path is refused (never opened on the host).

The test runs twice: with the test's own environment (``--env-manager local``) and from a fresh virtual
environment that MLflow builds from the model's own ``requirements.txt`` (``--env-manager virtualenv``, ~95 s
the first time on a 2-core machine, cached in ``~/.mlflow/envs`` after; skipped where pyenv or virtualenv is
missing).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import QUERY, random_image
from mlflow_server import free_port
from s3_server import wait_http

from medloc_core.registry import versions
from medloc_core.registry.serving import encode_image


def _post(url: str, payload: object) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _virtualenv_available() -> bool:
    import importlib.util
    import shutil

    return shutil.which("pyenv") is not None and importlib.util.find_spec("virtualenv") is not None


@pytest.fixture(
    params=[
        "local",
        pytest.param(
            "virtualenv",
            marks=pytest.mark.skipif(not _virtualenv_available(), reason="needs pyenv and virtualenv"),
        ),
    ]
)
def served(request, mlflow_server_uri, tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    """Register the random stand-in (its answers never parse) and serve it with ``mlflow models serve``."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_uri)
    mlflow.set_tracking_uri(mlflow_server_uri)
    client = MlflowClient(tracking_uri=mlflow_server_uri, registry_uri=mlflow_server_uri)
    try:
        client.delete_registered_model(versions.MODEL_NAME)
    except mlflow.exceptions.MlflowException:
        pass
    version = versions.log_and_register(
        tiny_model_dir, {"eval/A@0.5": 1.0}, eval_set_hash="serve", max_new_tokens=16
    )
    if mlflow.active_run() is not None:
        mlflow.end_run()
    manager = request.param
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    # mlflow starts `uvicorn` by name: the interpreter's bin folder goes first on PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server_uri, "PATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{versions.MODEL_NAME}/{version}",
         "-p", str(port), "-h", "127.0.0.1", "--env-manager", manager, "-w", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", proc, tmp_path / "serve.log", timeout_s=1800 if manager != "local" else 180)
        yield url + "/invocations"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _b64(image) -> str:
    return encode_image(image)


@pytest.mark.slow
def test_served_model_answers_base64_and_refuses_bad_requests(served, tmp_path):
    image = random_image(90, 120, seed=3)
    code, body = _post(
        served, {"dataframe_split": {"columns": ["image", "query"], "data": [[_b64(image), QUERY]]}}
    )
    assert code == 200, body
    (row,) = json.loads(body)["predictions"]
    assert row["parsed"] is False and row["x1"] is None and row["y2"] is None  # null, not NaN
    assert "NaN" not in body

    path = tmp_path / "on-the-host.png"
    image.save(path)
    bad = {
        "a path on the host": [[str(path), QUERY]],
        "invalid base64": [["%%%not base64%%%", QUERY]],
        "bytes that are not an image": [[base64.b64encode(b"hello world").decode(), QUERY]],
        "an empty query": [[_b64(image), "  "]],
    }
    for what, data in bad.items():
        code, body = _post(served, {"dataframe_split": {"columns": ["image", "query"], "data": data}})
        assert code == 400, (what, code, body)
        payload = json.loads(body)
        assert "\n" not in payload["message"] and "Traceback" not in body and "stack_trace" not in payload, (
            what
        )
        assert payload["message"].startswith("row 0: "), (what, payload["message"])

    # Requests MLflow's own server refuses before the model sees them: one line, the payload never echoed.
    secret = "PAYLOAD-MARKER-" + "x" * 40
    raw = {
        "no image column": json.dumps(
            {"dataframe_split": {"columns": ["query"], "data": [[secret]]}}
        ).encode(),
        "bytes that are not UTF-8": b'{"dataframe_split": "\xff\xfe' + secret.encode() + b'"}',
        "not JSON": secret.encode(),
    }
    messages = {}
    for what, body_bytes in raw.items():
        request = urllib.request.Request(
            served, data=body_bytes, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=120)
        text = err.value.read().decode("utf-8", "replace")
        assert err.value.code == 400, (what, err.value.code, text)
        message = json.loads(text)["message"]
        assert "\n" not in message and secret not in text and "stack_trace" not in text, (what, text)
        messages[what] = message
    assert "'image'" in messages["no image column"], messages
    assert "UTF-8 JSON" in messages["bytes that are not UTF-8"], messages


def test_model_is_logged_from_code_not_pickled(mlflow_server_uri, tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_uri)
    mlflow.set_tracking_uri(mlflow_server_uri)
    version = versions.log_and_register(
        tiny_model_dir, {"eval/A@0.5": 1.0}, eval_set_hash="code", max_new_tokens=8
    )
    if mlflow.active_run() is not None:
        mlflow.end_run()
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{versions.MODEL_NAME}/{version}", dst_path=str(tmp_path)
        )
    )
    assert not list(local.rglob("*.pkl"))  # nothing that runs code on unpickling
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert mlmodel["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models-from-code
    assert (local / "served_model.py").is_file()
    assert mlmodel["config"] == {"answer_style": "think", "max_new_tokens": 8, "default_query": ""}
    assert (
        local / "code" / "medloc_core" / "registry" / "versions.py"
    ).is_file()  # the package travels with the model
    assert (local / "input_example.json").is_file() or (local / "serving_input_example.json").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "mlflow==" in requirements and "torch==" in requirements
