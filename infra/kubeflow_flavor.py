"""ZenML's Kubeflow orchestrator (0.98) with the two fixes MedLoc's GPU recipe needs, as a custom flavor
``medloc_kubeflow`` (registered by ``infra/stacks.py kubeflow``; settings key ``orchestrator.medloc_kubeflow``).

1. Its settings rebuild ``pod_settings`` from the legacy ``node_selectors``/``node_affinity`` fields on every
   validation, so a step's own ``pod_settings`` (and with it the accelerator node selector that makes KFP request
   the step's GPUs) never reaches the compiled pipeline: the GPU count was silently dropped. Here the legacy
   fields are converted only when they are given.
2. It hands KFP the memory limit as a float of gigabytes, which ``kfp`` refuses; here it is a Kubernetes
   quantity (``128G``).

Everything else is ZenML's. ``tests/test_infra_kubeflow.py`` compiles the pipeline with it, offline.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import model_validator
from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import (
    KubeflowOrchestratorFlavor,
    KubeflowOrchestratorSettings,
)
from zenml.integrations.kubeflow.orchestrators.kubeflow_orchestrator import KubeflowOrchestrator
from zenml.utils.pydantic_utils import before_validator_handler

FLAVOR = "medloc_kubeflow"


class MedlocKubeflowOrchestratorSettings(KubeflowOrchestratorSettings):
    """Kubeflow settings whose ``pod_settings`` survive validation."""

    @model_validator(mode="before")
    @classmethod
    @before_validator_handler
    def _validate_and_migrate_pod_settings(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Same name as ZenML's validator, so it replaces it: the legacy fields only when they are given.
        if data.get("node_selectors") or data.get("node_affinity") or not data.get("pod_settings"):
            legacy = {k: data[k] for k in ("node_selectors", "node_affinity") if data.get(k)}
            data["pod_settings"] = KubeflowOrchestratorSettings(**legacy).pod_settings
        return data


def _quantity(memory: str) -> str:
    """ZenML's ``"128GB"`` / ``"512MiB"`` as a Kubernetes quantity (``128G`` / ``512Mi``)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGTP]i?)B?\s*", memory)
    if match is None:
        raise ValueError(f"memory {memory!r}: expected e.g. 128GB or 512MiB")
    return match.group(1) + match.group(2)


class MedlocKubeflowOrchestrator(KubeflowOrchestrator):
    """ZenML's Kubeflow orchestrator with the settings above and a KFP-valid memory limit."""

    @property
    def settings_class(self) -> type[MedlocKubeflowOrchestratorSettings]:
        return MedlocKubeflowOrchestratorSettings

    def _configure_container_resources(
        self, dynamic_component: Any, resource_settings: Any, *args: Any
    ) -> Any:
        memory = resource_settings.memory if resource_settings else None
        if memory:
            resource_settings = resource_settings.model_copy(update={"memory": None})
        task = super()._configure_container_resources(dynamic_component, resource_settings, *args)
        return task.set_memory_limit(_quantity(memory)) if memory else task


class MedlocKubeflowOrchestratorFlavor(KubeflowOrchestratorFlavor):
    """The ``medloc_kubeflow`` orchestrator flavor."""

    @property
    def name(self) -> str:
        return FLAVOR

    @property
    def implementation_class(self) -> type[MedlocKubeflowOrchestrator]:
        return MedlocKubeflowOrchestrator
