"""`medloc_training` on the local orchestrator with the S3 artifact store (loopback moto server) and a real
MLflow tracking server (loopback, artifacts proxied into the same bucket): the scale-out path of issue #6,
minus the cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import MAX_STEPS, env_for, shrunken_config
from s3_server import MlflowServer, S3Server

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_medloc_training_on_s3_artifact_store_and_mlflow_server(
    tmp_path: Path,
    s3: S3Server,  # noqa: F811
    mlflow_s3: MlflowServer,  # noqa: F811
) -> None:
    # No MLFLOW_TRACKING_URI: the steps must find the server through the stack's MLflow experiment tracker.
    env = env_for(tmp_path, mlflow_uri=None)
    env.update(
        MEDLOC_MLFLOW_USERNAME="medloc",  # the server is unauthenticated; ZenML insists on credentials
        MEDLOC_MLFLOW_PASSWORD="unused",
        **s3.stack_env,
    )
    bin_dir = Path(sys.executable).parent
    register = subprocess.run(
        [
            sys.executable,
            str(REPO / "infra" / "stacks.py"),
            "local-s3",
            "--set",
            "--mlflow-uri",
            mlflow_s3.tracking_uri,
            "--s3-endpoint",
            s3.endpoint_url,
            "--bucket",
            s3.bucket,
        ],
        cwd=tmp_path,  # not the repository: its `.zen/` (from `make run`) belongs to the developer's store
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert register.returncode == 0, register.stdout[-2000:] + register.stderr[-3000:]
    active = subprocess.run(
        [
            sys.executable,
            "-c",
            "from zenml.client import Client; print('STACK', Client().active_stack_model.id)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert active.returncode == 0, active.stderr[-2000:]
    # The pipeline runs from the repository root (its source root); the env var picks the stack over any `.zen/`.
    env["ZENML_ACTIVE_STACK_ID"] = active.stdout.split("STACK ", 1)[1].split()[0]
    run = subprocess.run(
        [str(bin_dir / "zenml"), "pipeline", "run", "medloc_training", "-c", str(shrunken_config(tmp_path))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    # ZenML artifacts of this run (records table, the trained model folder archive) are in the bucket.
    keys = s3.keys("zenml/")
    assert any(k.endswith("data.tar.gz") for k in keys), keys[:30]  # Path materializer: the model folder
    assert any("records" in k for k in keys), keys[:30]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_s3.tracking_uri)
    experiment = client.get_experiment_by_name("medloc")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's classic ML view
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.data.tags.get("zenml")  # started by the stack's ZenML MLflow experiment tracker
    history = client.get_metric_history(mlflow_run.info.run_id, "curriculum/threshold")
    assert len(history) == MAX_STEPS
    version = client.get_model_version_by_alias("medloc-grounder", "challenger")
    assert version.tags["medloc.run_id"] == mlflow_run.info.run_id
    mlflow_keys = s3.keys("mlflow/")
    run_id = mlflow_run.info.run_id
    assert any(k.endswith(f"{run_id}/artifacts/plots/curriculum.png") for k in mlflow_keys), mlflow_keys[:30]
