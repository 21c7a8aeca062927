"""The README's serving path as written: ``medloc serve`` (this environment, no package index) and a ``curl``
with a real image file and no query; the model's logged input example returns a box."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ANSWER_STYLE, QUERY, random_image
from mlflow_server import free_port
from s3_server import wait_http

from medloc_core.registry import versions

MEDLOC = Path(sys.executable).with_name("medloc")


def _curl(url: str, body: Path) -> dict:
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{url}/invocations", "-H", "Content-Type: application/json",
         "--data", f"@{body}"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.slow
def test_medloc_serve_answers_curl_with_an_image_file_and_no_query(
    server_env, answering_model_dir, tmp_path, monkeypatch
):
    version = versions.log_and_register(
        answering_model_dir, {"eval/A@0.5": 1.0}, eval_set_hash="offline", answer_style=ANSWER_STYLE,
        max_new_tokens=40, default_query=QUERY,
    )  # fmt: skip
    port, log = free_port(), tmp_path / "serve.log"
    env = {
        **os.environ,
        "MEDLOC_HOME": str(tmp_path / "home"),
        "PIP_NO_INDEX": "1",  # an offline host: nothing may be installed
        "PIP_INDEX_URL": "http://127.0.0.1:9/unreachable",
    }
    command = [
        str(MEDLOC),
        "serve",
        "--model",
        f"models:/{versions.MODEL_NAME}/{version}",
        "--port",
        str(port),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", proc, log, timeout_s=180)
        image = tmp_path / "lesion.jpg"
        random_image(120, 160, seed=5).save(image)
        # the README's request: the image file base64-encoded into the JSON body, no query column
        encoded = subprocess.run(
            ["base64", "-w0", str(image)], capture_output=True, text=True, check=True
        ).stdout
        body = tmp_path / "request.json"
        body.write_text(json.dumps({"dataframe_split": {"columns": ["image"], "data": [[encoded]]}}))
        (row,) = _curl(url, body)["predictions"]
        assert (
            row["parsed"] is True and 0 <= row["x1"] < row["x2"] <= 160 and 0 <= row["y1"] < row["y2"] <= 120
        )

        example = Path(
            versions.mlflow.artifacts.download_artifacts(
                f"models:/{versions.MODEL_NAME}/{version}/serving_input_example.json", dst_path=str(tmp_path)
            )
        )
        assert "query" not in example.read_text()  # the default query is used
        (row,) = _curl(url, example)["predictions"]
        assert row["parsed"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=30)
