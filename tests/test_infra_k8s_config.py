"""configs/medloc_training_k8s.yaml: GPU pod settings on train_model only, CronJob schedule, docker settings.

Pods, Jobs and the CronJob are built with ZenML's own Kubernetes manifest helpers, the way the orchestrator
and its entrypoint do (pipeline-level settings merged under step-level ones, default memory request added).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infra import render_k8s  # noqa: E402
from infra.validate_manifests import schema_validator_available, validate_model, validate_schema  # noqa: E402

CONFIG_PATH = REPO / "configs" / "medloc_training_k8s.yaml"
STEPS = render_k8s.STEPS
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG_PATH.read_text())


def step_pod(config: dict[str, Any], step: str) -> dict[str, Any]:
    """The step pod manifest as the orchestrator builds it (``infra/render_k8s.py``), as a plain dict."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(render_k8s.step_pod(config, step))


def test_config_is_a_valid_zenml_run_configuration(config):
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    run_config = PipelineRunConfiguration.model_validate(config)
    assert set(run_config.steps) == {"train_model"}
    assert set(run_config.parameters) == {"data", "preprocessing", "training", "evaluation", "registration"}
    assert run_config.enable_cache is False


def test_only_train_model_requests_gpus(config):
    gpus = {}
    for step in STEPS:
        pod = step_pod(config, step)
        validate_model(pod, f"{step} pod")
        if schema_validator_available():
            validate_schema(pod, f"{step} pod")
        resources = pod["spec"]["containers"][0]["resources"]
        gpus[step] = (resources.get("requests", {}).get(GPU), resources.get("limits", {}).get(GPU))
        if step != "train_model":
            spec = pod["spec"]
            assert "nodeSelector" not in spec and "tolerations" not in spec, step
            assert resources["requests"] == {"cpu": "2", "memory": "8Gi"}, step
    assert gpus == {
        "ingest_data": (None, None),
        "preprocess_data": (None, None),
        "train_model": ("4", "4"),
        "evaluate_model": (None, None),
        "register_model": (None, None),
    }


def test_train_model_pod_targets_gpu_nodes_with_shm(config):
    pod = step_pod(config, "train_model")
    spec = pod["spec"]
    container = spec["containers"][0]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    assert container["resources"]["requests"] == {"cpu": "16", "memory": "128Gi", GPU: "4"}
    assert container["resources"]["limits"] == {"memory": "160Gi", GPU: "4"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in spec["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert spec["serviceAccountName"] == "medloc-pipelines"


def test_accelerate_processes_match_gpu_count(config):
    accelerate = config["parameters"]["training"]["accelerate"]
    assert accelerate == {"num_processes": 4, "mixed_precision": "bf16"}
    limits = config["steps"]["train_model"]["settings"]["orchestrator.kubernetes"]["pod_settings"][
        "resources"
    ]
    assert int(limits["limits"][GPU]) == accelerate["num_processes"]


def test_every_step_pod_gets_datasets_scratch_and_mlflow_credentials(config):
    assert config["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow.medloc.svc.cluster.local:5000"
    assert config["environment"]["MEDLOC_HOME"].startswith("/scratch/")
    for step in STEPS:
        spec = step_pod(config, step)["spec"]
        container = spec["containers"][0]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert {"datasets": "/data", "models": "/models", "scratch": "/scratch"}.items() <= mounts.items(), (
            step
        )
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
        ]
        assert claims == ["medloc-datasets", "medloc-models"], step
        assert container["envFrom"] == [{"secretRef": {"name": "medloc-mlflow-client"}}], step
        assert ("dshm" in mounts) == (step == "train_model"), step


def test_parameters_follow_the_gpu_recipe(config):
    gpu_path = REPO / "configs" / "medloc_training_gpu.yaml"
    if not gpu_path.exists():
        pytest.skip("configs/medloc_training_gpu.yaml not present")
    gpu = yaml.safe_load(gpu_path.read_text())["parameters"]
    ours = config["parameters"]
    assert set(ours) == set(gpu)
    for section in gpu:
        assert set(ours[section]) - {"accelerate"} == set(gpu[section]) - {"accelerate"}, section
    # the same weights, from the pre-filled volume instead of the hub (no pod downloads them)
    assert (
        ours["training"]["model_name_or_path"]
        == "/models/" + gpu["training"]["model_name_or_path"].split("/")[-1]
    )
    assert config["environment"]["HF_HUB_OFFLINE"] == "1"


def test_schedule_becomes_a_forbid_cronjob(config):
    from kubernetes.client import ApiClient

    from pipelines.schedule import schedule_from_config

    schedule = schedule_from_config(CONFIG_PATH)
    assert schedule.cron_expression == "0 3 * * 1" and schedule.name == "medloc-weekly-retrain"
    cron = render_k8s.cron_job(config)
    doc = ApiClient().sanitize_for_serialization(cron)
    validate_model(doc, "cronjob")
    if schema_validator_available():
        validate_schema(doc, "cronjob")
    assert doc["kind"] == "CronJob" and doc["apiVersion"] == "batch/v1"
    assert doc["spec"]["schedule"] == "0 3 * * 1"
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"
    assert doc["spec"]["startingDeadlineSeconds"] == 3600
    assert (doc["spec"]["successfulJobsHistoryLimit"], doc["spec"]["failedJobsHistoryLimit"]) == (3, 5)
    orchestrator_pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert orchestrator_pod["containers"][0]["resources"]["requests"] == {"cpu": "250m", "memory": "1Gi"}
    assert GPU not in str(orchestrator_pod)


def test_docker_settings_build_the_repo_dockerfile(config):
    from zenml.config import DockerSettings

    docker = DockerSettings.model_validate(config["settings"]["docker"])
    assert not docker.model_extra
    assert (REPO / docker.dockerfile).is_file()
    assert docker.build_context_root == "."
    assert docker.install_stack_requirements is False


def test_render_shows_offline_what_the_config_creates(tmp_path, capsys):
    """`python infra/render_k8s.py CONFIG` for review: every object valid, GPUs on train_model only."""
    out = tmp_path / "rendered.yaml"
    assert render_k8s.main([str(CONFIG_PATH), "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["Pod"] * len(STEPS) + ["CronJob"]
    for doc in docs:
        validate_model(doc, str(out))
    assert render_k8s.main([str(CONFIG_PATH), "--summary"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [("gpus=4" in line) for line in lines] == [step == "train_model" for step in STEPS] + [False]
    assert "schedule='0 3 * * 1'" in lines[-1] and all("/models" in line for line in lines[:-1])
    with pytest.raises(SystemExit) as done:
        render_k8s.main(["--help"])
    assert done.value.code == 0
