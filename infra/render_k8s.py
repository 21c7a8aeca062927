"""Render, offline, what a run config would create on the Kubernetes stack: the pod of every pipeline step (the
step's pod settings merged over the pipeline's, as ZenML merges them) and, with a ``schedule:`` block, the
CronJob of the orchestrator pod. Built with ZenML's own Kubernetes manifest builders and settings classes, so a
reviewer sees the GPU request, node selector, tolerations, volumes and environment each pod would get, with no
cluster and no ZenML server.

Usage: ``.venv/bin/python infra/render_k8s.py configs/medloc_training_k8s.yaml [--image IMAGE] [-o out.yaml]``.
The step command and image are placeholders (ZenML fills them in when it builds the run); everything a config
decides is real.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

#: The pipeline's steps, in order (pipelines/medloc_training.py).
STEPS = ("ingest_data", "preprocess_data", "train_model", "evaluate_model", "register_model")
SETTINGS_KEY = "orchestrator.kubernetes"
IMAGE = "<the step image ZenML builds>"


def step_settings(config: Mapping[str, Any], step: str | None) -> Any:
    """``KubernetesOrchestratorSettings`` of ``step``: its own merged over the pipeline's (nested mappings merged
    key by key, lists replaced), as ZenML's compiler does; ``step=None``: the pipeline's (the orchestrator pod
    and the CronJob). Unknown keys are an error."""
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorSettings
    from zenml.utils import pydantic_utils

    pipeline = KubernetesOrchestratorSettings.model_validate(
        copy.deepcopy((config.get("settings") or {}).get(SETTINGS_KEY) or {})
    )
    own = {}
    if step is not None:
        own = ((config.get("steps") or {}).get(step) or {}).get("settings", {}).get(SETTINGS_KEY) or {}
    settings = pydantic_utils.update_model(pipeline, update=copy.deepcopy(own), recursive=True)
    if settings.model_extra:
        raise ValueError(f"unknown KubernetesOrchestratorSettings keys: {sorted(settings.model_extra)}")
    return settings


def step_pod(config: Mapping[str, Any], step: str, *, image: str = IMAGE) -> Any:
    """The pod of ``step`` as the orchestrator builds it (its default memory request added)."""
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest

    settings = step_settings(config, step)
    return build_pod_manifest(
        pod_name=f"medloc-{step.replace('_', '-')}",
        image_name=image,
        command=["python", "-m", "zenml.entrypoints.step_entrypoint"],
        args=["--step_name", step],
        privileged=settings.privileged,
        pod_settings=kube_utils.apply_default_resource_requests(
            memory="400Mi", pod_settings=settings.pod_settings
        ),
        service_account_name=settings.step_pod_service_account_name or settings.service_account_name,
        env={str(k): str(v) for k, v in (config.get("environment") or {}).items()},
        labels={"pipeline": "medloc_training", "step_name": step},
    )


def cron_job(config: Mapping[str, Any], *, image: str = IMAGE) -> Any | None:
    """The CronJob of the orchestrator pod when the config has a ``schedule:`` block, else None."""
    from zenml.integrations.kubernetes.manifest_utils import (
        build_cron_job_manifest,
        build_job_manifest,
        build_pod_manifest,
        job_template_manifest_from_job,
        pod_template_manifest_from_pod,
    )

    schedule = config.get("schedule") or {}
    if not schedule.get("cron_expression"):
        return None
    settings = step_settings(config, None)
    pod = build_pod_manifest(
        pod_name=None,
        image_name=image,
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
    return build_cron_job_manifest(
        job_template=job_template_manifest_from_job(job),
        cron_expression=schedule["cron_expression"],
        successful_jobs_history_limit=settings.successful_jobs_history_limit,
        failed_jobs_history_limit=settings.failed_jobs_history_limit,
        concurrency_policy=settings.concurrency_policy,
        starting_deadline_seconds=settings.starting_deadline_seconds,
    )


def render(config: Mapping[str, Any], *, image: str = IMAGE) -> list[dict[str, Any]]:
    """The Kubernetes objects the run config would create, as plain manifests: one pod per step, and the CronJob
    of a scheduled config."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            **api.sanitize_for_serialization(step_pod(config, s, image=image)),
        }
        for s in STEPS
    ]
    cron = cron_job(config, image=image)
    return objects + ([api.sanitize_for_serialization(cron)] if cron is not None else [])


def summary(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per object: kind, name, GPUs, node selector, volumes mounted."""
    lines = []
    for obj in objects:
        pod = (
            obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            if obj["kind"] == "CronJob"
            else obj["spec"]
        )
        container = pod["containers"][0]
        gpus = ((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", "0")
        mounts = ", ".join(f"{m['mountPath']}" for m in container.get("volumeMounts") or [])
        where = obj["spec"].get("schedule", "")
        lines.append(
            f"{obj['kind']:<8} {obj['metadata']['name']:<40} gpus={gpus:<2} "
            f"nodes={pod.get('nodeSelector') or {}} mounts=[{mounts}]"
            + (f" schedule='{where}'" if where else "")
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="run config, e.g. configs/medloc_training_k8s.yaml")
    parser.add_argument("--image", default=IMAGE, help="image name to show")
    parser.add_argument("-o", "--output", type=Path, help="write the manifests (YAML) here; default: stdout")
    parser.add_argument("--summary", action="store_true", help="one line per object instead of the manifests")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    objects = render(config, image=args.image)
    text = (
        "\n".join(summary(objects)) + "\n" if args.summary else yaml.safe_dump_all(objects, sort_keys=False)
    )
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ModuleNotFoundError as exc:  # run with a Python that lacks the project's packages
        sys.exit(
            f"{sys.argv[0]}: needs the project's Python ({exc.name} is missing): .venv/bin/python {sys.argv[0]} ..."
        )
