"""The MLflow run of the current pipeline run, entered from inside a step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from zenml import get_step_context

from medloc_core import tracking


@contextmanager
def step_mlflow_run() -> Iterator[Any]:
    """Enter the one MLflow run shared by all steps of this pipeline run (resumed by ZenML run id)."""
    context = get_step_context()
    run = context.pipeline_run
    tags = {"zenml.pipeline": context.pipeline.name, "zenml.run_name": run.name, "zenml.run_id": str(run.id)}
    with tracking.pipeline_run(str(run.id), run.name, tags=tags) as mlflow_run:
        yield mlflow_run


def run_folder(name: str) -> Any:
    """A scratch folder for this pipeline run under ``MEDLOC_HOME/runs/<run name>/<name>``."""
    folder = tracking.medloc_home() / "runs" / get_step_context().pipeline_run.name / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
