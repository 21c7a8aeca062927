"""infra/stacks.py against a temporary ZenML store: idempotent registration, and the k8s config compiled by
ZenML on the registered k8s-gpu stack requests GPUs for train_model only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def zenml_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess using a throw-away ZenML store under ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MEDLOC_"))}
    env.update(
        ZENML_CONFIG_PATH=str(root / "config"),
        ZENML_LOCAL_STORES_PATH=str(root / "stores"),
        ZENML_ANALYTICS_OPT_IN="false",
        ZENML_LOGGING_COLORS_DISABLED="true",
        ZENML_DISABLE_INTERACTIVE_INPUT="true",
        ZENML_ENABLE_REPO_INIT_WARNINGS="false",
    )
    env.update(extra)
    return env


def register(args: list[str], env: dict[str, str]) -> tuple[int, dict[str, str], str]:
    # cwd outside the repository: with `--set`, ZenML writes the active stack into the nearest `.zen/` above the
    # working directory, and the repository's `.zen/` (made by `make run`) belongs to the developer's store.
    proc = subprocess.run(
        [PY, str(REPO / "infra" / "stacks.py"), *args],
        env=env,
        cwd=Path(env["ZENML_CONFIG_PATH"]).parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout[proc.stdout.index("{") :]) if proc.returncode == 0 else {}
    return proc.returncode, report, proc.stderr


# Compiles a stand-in pipeline with the real step names on the active stack and prints, per step, what the
# Kubernetes orchestrator would request (settings resolved by the orchestrator itself, pod built like its
# entrypoint does).
COMPILE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from zenml import pipeline, step
    from zenml.client import Client
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest
    from kubernetes.client import ApiClient

    @step
    def ingest_data() -> int:
        return 1

    @step
    def preprocess_data(x: int) -> int:
        return x

    @step
    def train_model(x: int, config: dict | None = None) -> int:
        return x

    @step
    def evaluate_model(x: int) -> int:
        return x

    @step
    def register_model(x: int) -> None:
        pass

    @pipeline
    def medloc_training(
        data: dict | None = None,
        preprocessing: dict | None = None,
        training: dict | None = None,
        evaluation: dict | None = None,
        registration: dict | None = None,
    ):
        register_model(evaluate_model(train_model(preprocess_data(ingest_data()), config=training)))

    # As `zenml pipeline run -c` does: the config's pipeline parameters are bound when the pipeline is prepared.
    configured = medloc_training.with_options(config_path=sys.argv[1])
    configured.prepare()
    snapshot, schedule, _ = configured._compile(config_path=sys.argv[1])
    orchestrator = Client().active_stack.orchestrator
    out = {"orchestrator": orchestrator.flavor, "cron": schedule.cron_expression, "steps": {}}
    for name, step_run in snapshot.step_configurations.items():
        settings = orchestrator.get_settings(step_run)
        pod_settings = kube_utils.apply_default_resource_requests(memory="400Mi", pod_settings=settings.pod_settings)
        pod = build_pod_manifest(None, "image:test", ["python"], [], False, pod_settings=pod_settings)
        spec = ApiClient().sanitize_for_serialization(pod)["spec"]
        out["steps"][name] = {
            "resources": spec["containers"][0].get("resources", {}),
            "tolerations": spec.get("tolerations", []),
            "mounts": [m["mountPath"] for m in spec["containers"][0].get("volumeMounts", [])],
            "concurrency_policy": settings.concurrency_policy,
            "parameters": step_run.config.parameters,
        }
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_stack_registration_is_idempotent_and_k8s_config_compiles(tmp_path: Path):
    env = zenml_env(tmp_path)
    # Without secret values and without --placeholder-secrets, k8s-gpu refuses clearly and registers nothing.
    code, _, err = register(["k8s-gpu"], env)
    assert code == 1 and "medloc_s3_creds" in err and "zenml secret create" in err

    code, first, err = register(["k8s-gpu", "--placeholder-secrets", "--set"], env)
    assert code == 0, err
    assert first == {
        "secret:medloc_s3_creds": "created",
        "secret:medloc_mlflow_auth": "created",
        "orchestrator:medloc_k8s": "created",
        "artifact_store:medloc_s3": "created",
        "container_registry:medloc_registry": "created",
        "image_builder:medloc_kaniko": "created",
        "experiment_tracker:medloc_mlflow_server": "created",
        "model_registry:medloc_mlflow_registry": "created",
        "stack:k8s-gpu": "created",
    }
    code, second, err = register(["k8s-gpu", "--placeholder-secrets", "--set"], env)
    assert code == 0, err
    assert set(second) == set(first) and set(second.values()) == {"unchanged"}

    # A changed value updates only what changed.
    code, third, err = register(["k8s-gpu", "--set"], {**env, "MEDLOC_REGISTRY_URI": "ghcr.io/acme/medloc"})
    assert code == 0, err
    assert {k for k, v in third.items() if v != "unchanged"} == {"container_registry:medloc_registry"}

    script = tmp_path / "compile_k8s.py"
    script.write_text(COMPILE_SCRIPT)
    proc = subprocess.run(
        [PY, str(script), str(REPO / "configs" / "medloc_training_k8s.yaml")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["orchestrator"] == "kubernetes" and result["cron"] == "0 3 * * 1"
    steps = result["steps"]
    assert set(steps) == {"ingest_data", "preprocess_data", "train_model", "evaluate_model", "register_model"}
    for name, step in steps.items():
        assert step["concurrency_policy"] == "Forbid"
        has_gpu = "nvidia.com/gpu" in step["resources"].get("limits", {})
        assert has_gpu == (name == "train_model"), name
    assert steps["train_model"]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert steps["train_model"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert steps["train_model"]["parameters"]["config"]["accelerate"] == {
        "num_processes": 4,
        "mixed_precision": "bf16",
    }
    assert steps["train_model"]["mounts"] == ["/data", "/models", "/scratch", "/dev/shm"]
    assert steps["evaluate_model"]["mounts"] == ["/data", "/models", "/scratch"]

    # The local stack registers beside it, idempotently, and becomes active.
    code, local1, err = register(["local", "--set"], env)
    assert code == 0, err
    assert local1["stack:local"] == "created" and local1["orchestrator:default"] == "unchanged"
    code, local2, err = register(["local", "--set"], env)
    assert code == 0 and set(local2.values()) == {"unchanged"}


OPEN_SERVER_SCRIPT = textwrap.dedent(
    """
    import json, mlflow
    from zenml.client import Client
    from steps.mlflow_run import ensure_embedded_stack

    ensure_embedded_stack()  # what the pipeline does before it composes a run
    tracker = Client().active_stack.experiment_tracker
    tracker.configure_mlflow()
    mlflow.set_experiment("open-server-check")
    with mlflow.start_run() as run:
        mlflow.log_metric("reached", 1.0)
    keys = ("tracking_username", "tracking_token")
    resolved = {k: getattr(tracker.config, k) for k in keys}  # secret references resolved on access
    stored = {k: v for k, v in tracker.config.model_dump().items() if k.startswith("tracking_")}
    print("RESULT " + json.dumps({"run_id": run.info.run_id, "resolved": resolved, "stored": stored}, default=str))
    """
)


@pytest.mark.slow
def test_the_embedded_stack_logs_to_an_open_tracking_server_and_uses_credentials_when_given(
    tmp_path: Path,
    mlflow_server_uri: str,  # noqa: F811  (conftest fixture: a plain `mlflow server`, no authentication)
) -> None:
    """``MLFLOW_TRACKING_URI=http://...`` of an unauthenticated server works as is; with credentials in the
    environment, the tracker uses them (from a ZenML secret, never stored in its settings)."""
    from mlflow import MlflowClient

    def run(**extra: str) -> dict:
        env = zenml_env(
            tmp_path / "zenml", MLFLOW_TRACKING_URI=mlflow_server_uri, MEDLOC_HOME=str(tmp_path / "home"),
            PYTHONPATH=str(REPO), **extra,
        )  # fmt: skip
        env = {k: v for k, v in env.items() if k == "MLFLOW_TRACKING_URI" or not k.startswith("MLFLOW_")}
        env.update(extra)
        script = tmp_path / "check_tracker.py"  # a file: ZenML takes its folder as the source root
        script.write_text(OPEN_SERVER_SCRIPT)
        proc = subprocess.run(
            [PY, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.split("RESULT ", 1)[1])

    client = MlflowClient(tracking_uri=mlflow_server_uri)
    open_run = run()
    assert client.get_run(open_run["run_id"]).data.metrics["reached"] == 1.0
    assert open_run["resolved"]["tracking_username"] is None
    with_password = run(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD="s3cret-pw")
    assert client.get_run(with_password["run_id"]).data.metrics["reached"] == 1.0
    assert with_password["resolved"] == {"tracking_username": "alice", "tracking_token": None}
    stored = json.dumps(with_password["stored"])
    assert "s3cret-pw" not in stored and "{{medloc_mlflow_auth.password}}" in stored, stored
