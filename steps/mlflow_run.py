"""The MLflow run of the current pipeline run, entered from inside a step."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from zenml import get_step_context

from medloc_core import tracking

logger = logging.getLogger(__name__)


def use_stack_experiment_tracker() -> str | None:
    """Point MLflow at the active stack's MLflow experiment tracker, unless ``MLFLOW_TRACKING_URI`` is set.

    On the ``local-s3`` and ``k8s-gpu`` stacks the tracker component holds the server URI and takes the
    credentials from a ZenML secret; ``configure_mlflow`` exports both for this process. Without such a tracker
    (ZenML's default stack) the plain-MLflow fallback of :func:`medloc_core.tracking.tracking_uri` applies.
    Returns the URI taken from the tracker, or None.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    from zenml.client import Client

    tracker = Client().active_stack.experiment_tracker
    if tracker is None or tracker.flavor != "mlflow":
        return None
    tracker.configure_mlflow()
    return os.environ.get("MLFLOW_TRACKING_URI")


@contextmanager
def step_mlflow_run() -> Iterator[Any]:
    """Enter the one MLflow run shared by all steps of this pipeline run (resumed by ZenML run id)."""
    uri = use_stack_experiment_tracker()
    if uri:
        logger.info("MLflow: using the stack's experiment tracker at %s", uri)
    context = get_step_context()
    run = context.pipeline_run
    tags = {"zenml.pipeline": context.pipeline.name, "zenml.run_name": run.name, "zenml.run_id": str(run.id)}
    with tracking.pipeline_run(str(run.id), run.name, tags=tags) as mlflow_run:
        _link_step_to_mlflow_run(mlflow_run)
        yield mlflow_run


def _link_step_to_mlflow_run(mlflow_run: Any) -> None:
    """ZenML step metadata pointing at the MLflow run this step logs into (shown on the step in the dashboard)."""
    import mlflow
    from zenml import log_metadata

    log_metadata(
        {
            "mlflow_run_id": mlflow_run.info.run_id,
            "mlflow_experiment_id": mlflow_run.info.experiment_id,
            "mlflow_tracking_uri": mlflow.get_tracking_uri(),
        }
    )


def mark_mlflow_run_failed(exception: BaseException) -> None:
    """ZenML ``on_failure`` hook: the pipeline run failed, so its MLflow run ends FAILED (not FINISHED from the
    last step that succeeded), with the error as a tag."""
    import mlflow

    context = get_step_context()
    tracking.configure_mlflow()
    found = mlflow.search_runs(
        filter_string=f"tags.`{tracking.RUN_ID_TAG}` = '{context.pipeline_run.id}'",
        search_all_experiments=True,
        output_format="list",
        max_results=1,
    )
    if not found:
        return
    client = mlflow.MlflowClient()
    run_id = found[0].info.run_id
    client.set_tag(run_id, "medloc.failed_step", context.step_run.name)
    client.set_tag(
        run_id, "medloc.error", " ".join(f"{type(exception).__name__}: {exception}".split())[:5000]
    )
    client.set_terminated(run_id, status="FAILED")


def run_folder(name: str) -> Any:
    """A scratch folder for this pipeline run under ``MEDLOC_HOME/runs/<run name>/<name>``."""
    folder = tracking.medloc_home() / "runs" / get_step_context().pipeline_run.name / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
