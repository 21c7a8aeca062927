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

from infra.validate_manifests import schema_validator_available, validate_model, validate_schema  # noqa: E402

CONFIG_PATH = REPO / "configs" / "medloc_training_k8s.yaml"
STEPS = ("ingest_data", "preprocess_data", "train_model", "evaluate_model", "register_model")
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG_PATH.read_text())


def step_settings(config: dict[str, Any], step: str | None) -> Any:
    """KubernetesOrchestratorSettings for ``step`` (step-level merged over pipeline-level, as ZenML's compiler
    does); ``step=None`` gives the pipeline-level settings (those of the orchestrator pod and the CronJob)."""
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorSettings
    from zenml.utils import pydantic_utils

    pipeline_level = KubernetesOrchestratorSettings.model_validate(
        config["settings"]["orchestrator.kubernetes"]
    )
    step_level = {}
    if step is not None:
        step_level = config["steps"].get(step, {}).get("settings", {}).get("orchestrator.kubernetes", {})
    settings = pydantic_utils.update_model(pipeline_level, update=step_level, recursive=True)
    assert not settings.model_extra, f"unknown KubernetesOrchestratorSettings keys: {settings.model_extra}"
    return settings


def step_pod(config: dict[str, Any], step: str) -> dict[str, Any]:
    """The step pod manifest as the orchestrator entrypoint builds it, serialized to a plain dict."""
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest

    settings = step_settings(config, step)
    pod_settings = kube_utils.apply_default_resource_requests(
        memory="400Mi", pod_settings=settings.pod_settings
    )
    pod = build_pod_manifest(
        pod_name=f"medloc-{step.replace('_', '-')}",
        image_name="registry.example.com/medloc/medloc-step:test",
        command=["python", "-m", "zenml.entrypoints.step_entrypoint"],
        args=["--step_name", step],
        privileged=settings.privileged,
        pod_settings=pod_settings,
        service_account_name=settings.step_pod_service_account_name or settings.service_account_name,
        labels={"step_name": step},
    )
    return ApiClient().sanitize_for_serialization(pod)


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
        assert {"datasets": "/data", "scratch": "/scratch"}.items() <= mounts.items(), step
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
        ]
        assert claims == ["medloc-datasets"], step
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
    assert ours["training"]["model_name_or_path"] == gpu["training"]["model_name_or_path"]


def test_schedule_becomes_a_forbid_cronjob(config):
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes.manifest_utils import (
        build_cron_job_manifest,
        build_job_manifest,
        build_pod_manifest,
        job_template_manifest_from_job,
        pod_template_manifest_from_pod,
    )

    from pipelines.schedule import schedule_from_config

    schedule = schedule_from_config(CONFIG_PATH)
    assert schedule.cron_expression == "0 3 * * 1" and schedule.name == "medloc-weekly-retrain"
    settings = step_settings(config, None)
    pod = build_pod_manifest(
        pod_name=None,
        image_name="registry.example.com/medloc/medloc-step:test",
        command=[
            "python",
            "-m",
            "zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator_entrypoint",
        ],
        args=[],
        privileged=False,
        pod_settings=settings.orchestrator_pod_settings,
        service_account_name=settings.service_account_name,
    )
    job = build_job_manifest(
        job_name="medloc-training",
        pod_template=pod_template_manifest_from_pod(pod),
        ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
    )
    cron = build_cron_job_manifest(
        job_template=job_template_manifest_from_job(job),
        cron_expression=schedule.cron_expression,
        successful_jobs_history_limit=settings.successful_jobs_history_limit,
        failed_jobs_history_limit=settings.failed_jobs_history_limit,
        concurrency_policy=settings.concurrency_policy,
        starting_deadline_seconds=settings.starting_deadline_seconds,
    )
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
