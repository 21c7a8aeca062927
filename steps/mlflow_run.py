"""ZenML's MLflow experiment tracker for the pipeline: the embedded stack that carries it, the experiment it logs
into, and the run every step shares.

ZenML does the run handling: every step declares ``experiment_tracker=True``; the stack's MLflow tracker starts
(or resumes, by pipeline run name) one MLflow run per pipeline run in experiment ``medloc`` before each step, ends
it FAILED when a step fails, and records the run id as step metadata. This module only makes sure the embedded
default stack has such a tracker and adds MedLoc's tags.
"""

from __future__ import annotations

import logging
from typing import Any

from zenml import get_step_context

from infra.stack_specs import local_stack_spec
from infra.stacks import ensure_stack
from medloc_core import tracking

logger = logging.getLogger(__name__)

#: Pipeline settings for the stack's experiment tracker (any MLflow tracker: local SQLite, loopback, k8s server).
TRACKER_SETTINGS = {"experiment_tracker": {"experiment_name": tracking.EXPERIMENT}}
#: The embedded default stack (``infra/stacks.py local``): local orchestrator and artifact store, MLflow tracker.
EMBEDDED_STACK = "local"


def ensure_embedded_stack() -> str:
    """Give the embedded default an MLflow experiment tracker; return the active stack's name.

    On ZenML's bare ``default`` stack (a fresh ZenML store) or on MedLoc's own ``local`` stack, register or update
    ``local`` (orchestrator and artifact store ``default``, tracker ``medloc_mlflow_local`` at
    :func:`medloc_core.tracking.tracking_uri`, so ``MLFLOW_TRACKING_URI`` and ``MEDLOC_HOME`` still decide where
    the runs go) and activate it. Any other stack is the user's choice and is left alone: without a tracker
    ZenML refuses it when it compiles the pipeline, naming the step.
    """
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    stack = client.active_stack_model
    if stack.name not in ("default", EMBEDDED_STACK):
        return stack.name
    if stack.name == "default" and stack.components.get(StackComponentType.EXPERIMENT_TRACKER):
        return stack.name
    report = ensure_stack(client, local_stack_spec(tracking.tracking_uri()), activate=True)
    changed = {k: v for k, v in report.items() if v != "unchanged"}
    if changed or stack.name == "default":
        logger.info(
            "Embedded stack '%s' with the MLflow tracker at %s", EMBEDDED_STACK, tracking.tracking_uri()
        )
    return EMBEDDED_STACK


class _NoFastaiAutologWarning(logging.Filter):
    """ZenML's tracker disables MLflow autologging per framework before every step and warns that ``fastai``
    failed: MLflow 3 has no ``mlflow.fastai`` any more, so there is nothing to disable."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "autologging for the following frameworks: ['fastai']" not in record.getMessage()


def prepare_experiment() -> None:
    """Create experiment ``medloc`` ahead of the tracker when the tracking store is local, so that its artifacts
    go under ``MEDLOC_HOME`` (MLflow's default would be ``./mlruns`` of whatever the working directory is) and it
    carries the classic-ML tag. A remote server keeps its own artifact root; the tracker creates it there."""
    from zenml.client import Client
    from zenml.integrations.mlflow.experiment_trackers import mlflow_experiment_tracker as zenml_tracker

    zenml_logger = logging.getLogger(zenml_tracker.__name__)
    if not any(isinstance(f, _NoFastaiAutologWarning) for f in zenml_logger.filters):
        zenml_logger.addFilter(_NoFastaiAutologWarning())

    tracker = Client().active_stack.experiment_tracker
    if tracker is None or tracker.flavor != "mlflow":
        return
    uri = tracker.get_tracking_uri()
    if uri.startswith(("sqlite:", "file:")):
        tracking.configure_mlflow(uri=uri)


def pipeline_mlflow_run() -> Any:
    """The MLflow run the stack's tracker started for this pipeline run, tagged with the ZenML run."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError(
            "no active MLflow run: the step must declare experiment_tracker=True and the active ZenML stack "
            "must have an MLflow experiment tracker (`python infra/stacks.py local --set`)"
        )
    tracking.tag_experiment_kind(mlflow.get_experiment(run.info.experiment_id))
    context = get_step_context()
    mlflow.set_tags(
        {
            tracking.RUN_ID_TAG: str(context.pipeline_run.id),
            "zenml.pipeline": context.pipeline.name,
            "zenml.run_name": context.pipeline_run.name,
        }
    )
    return run


def tag_failure(exception: BaseException) -> None:
    """ZenML ``on_failure`` hook: the tracker ends the run FAILED; this says which step failed and why."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return
    client = mlflow.MlflowClient()
    client.set_tag(run.info.run_id, tracking.FAILED_STEP_TAG, get_step_context().step_run.name)
    client.set_tag(
        run.info.run_id,
        tracking.ERROR_TAG,
        " ".join(f"{type(exception).__name__}: {exception}".split())[:5000],
    )


def run_folder(name: str) -> Any:
    """A scratch folder for this pipeline run under ``MEDLOC_HOME/runs/<run name>/<name>``."""
    folder = tracking.medloc_home() / "runs" / get_step_context().pipeline_run.name / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
