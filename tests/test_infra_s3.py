"""A pipeline on the local orchestrator with the S3 artifact store (loopback moto) and an MLflow tracking
server (loopback, artifacts proxied to the same S3): artifacts land in the bucket and read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from s3_server import MlflowServer, S3Server

REPO = Path(__file__).resolve().parents[1]

# Runs in its own process (own ZenML global state): registers the `local-s3` stack with infra/stacks.py,
# runs a two-step pipeline whose second step logs to MLflow through the stack's experiment tracker, and
# prints what it stored.
PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, os.environ["MEDLOC_REPO"])
    import mlflow
    import pandas as pd
    from zenml import pipeline, step
    from zenml.client import Client
    from infra.stack_specs import local_s3_stack_spec, secret_values_from_env
    from infra.stacks import ensure_stack

    spec = local_s3_stack_spec(
        os.environ["MEDLOC_S3_ENDPOINT_URL"], os.environ["MEDLOC_S3_BUCKET"], os.environ["MEDLOC_MLFLOW_TRACKING_URI"],
        secrets=secret_values_from_env(),
    )
    report = ensure_stack(Client(), spec, activate=True)

    @step
    def make_table() -> pd.DataFrame:
        return pd.DataFrame({"x1": [1.0, 2.0], "y1": [3.0, 4.0], "x2": [5.0, 6.0], "y2": [7.0, 8.0]})

    @step(experiment_tracker="medloc_mlflow_loopback")
    def log_table(table: pd.DataFrame) -> dict:
        mlflow.log_metric("eval/mIoU", 0.25, step=1)
        mlflow.log_text(table.to_csv(index=False), "tables/boxes.csv")
        return {"run_id": mlflow.active_run().info.run_id, "rows": len(table)}

    @pipeline(enable_cache=False)
    def s3_smoke():
        log_table(make_table())

    run = s3_smoke()
    run = Client().get_pipeline_run(run.id)
    table_artifact = run.steps["make_table"].outputs["output"][0]
    info_artifact = run.steps["log_table"].outputs["output"][0]
    print("RESULT " + json.dumps({
        "status": str(run.status),
        "report": report,
        "artifact_store_path": Client().active_stack.artifact_store.path,
        "table_uri": table_artifact.uri,
        "table": table_artifact.load().to_dict(orient="list"),
        "info_uri": info_artifact.uri,
        "info": info_artifact.load(),
    }))
    """
)


@pytest.mark.slow
def test_pipeline_artifacts_and_mlflow_artifacts_live_in_loopback_s3(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
    mlflow_s3: MlflowServer,  # noqa: F811
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MEDLOC_", "AWS_", "MLFLOW_"))}
    env.update(
        ZENML_CONFIG_PATH=str(tmp_path / "zenml" / "config"),
        ZENML_LOCAL_STORES_PATH=str(tmp_path / "zenml" / "stores"),
        ZENML_ANALYTICS_OPT_IN="false",
        ZENML_LOGGING_COLORS_DISABLED="true",
        ZENML_DISABLE_INTERACTIVE_INPUT="true",
        MEDLOC_REPO=str(REPO),
        MEDLOC_MLFLOW_TRACKING_URI=mlflow_s3.tracking_uri,
        # The server is unauthenticated; ZenML still insists on credentials for an http tracking URI.
        MEDLOC_MLFLOW_USERNAME="medloc",
        MEDLOC_MLFLOW_PASSWORD="unused",
        **s3.stack_env,
    )
    # Only the stack's secret and client_kwargs point ZenML at the bucket: no AWS_* variables in the run.
    script = tmp_path / "s3_smoke.py"
    script.write_text(PIPELINE_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])

    assert result["status"] == "completed"
    assert result["report"]["stack:local-s3"] == "created"
    assert result["report"]["secret:medloc_s3_creds"] == "created"
    assert result["artifact_store_path"] == "s3://medloc-test/zenml"
    assert result["table_uri"].startswith("s3://medloc-test/zenml/")
    assert result["table"] == {"x1": [1.0, 2.0], "y1": [3.0, 4.0], "x2": [5.0, 6.0], "y2": [7.0, 8.0]}
    assert result["info"]["rows"] == 2

    # ZenML's objects are really in the bucket, below the artifact URIs it reported.
    keys = s3.keys("zenml/")
    table_prefix = result["table_uri"].removeprefix("s3://medloc-test/")
    assert any(k.startswith(table_prefix + "/") for k in keys), keys[:20]
    assert any(k.startswith(result["info_uri"].removeprefix("s3://medloc-test/") + "/") for k in keys)

    # MLflow: the metric is on the server, the artifact went through the server's proxy into the bucket.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_s3.tracking_uri)
    run_id = result["info"]["run_id"]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/mIoU")] == [(1, 0.25)]
    mlflow_keys = s3.keys("mlflow/")
    assert any(k.endswith(f"{run_id}/artifacts/tables/boxes.csv") for k in mlflow_keys), mlflow_keys
    downloaded = Path(client.download_artifacts(run_id, "tables/boxes.csv", str(tmp_path)))
    assert downloaded.read_text().splitlines() == ["x1,y1,x2,y2", "1.0,3.0,5.0,7.0", "2.0,4.0,6.0,8.0"]
