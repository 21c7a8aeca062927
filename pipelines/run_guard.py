"""What a ``medloc_training`` run does before ZenML composes it: one live run per embedded store, the stack,
and the runs a killed process left behind.

* **One live run per local ZenML store.** A run whose steps run in this process (the local orchestrator) holds
  an exclusive lock beside the store's database for its whole life; a second run started meanwhile (a
  scheduled run overlapping a manual one) refuses at once, in one line naming the holder. The kernel drops the
  lock when the process dies, ``kill -9`` included.
* **Killed runs are closed.** Holding that lock proves no other local run is live, so every ``medloc_training``
  run of this store still marked unfinished was orphaned by a dead process: its running step and the run
  become ``failed`` in ZenML, its MLflow run ``KILLED`` (tagged with the step), and a registry version it left
  half-registered is settled (``versions.retire_incomplete_versions``). Each gets a log line.

Runs on remote orchestrators (Kubernetes) take no lock and close nothing: their liveness is the cluster's.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import IO, Any

from medloc_core import locks, tracking

logger = logging.getLogger(__name__)

PIPELINE = "medloc_training"
_held: IO[str] | None = None  # the lock of the run this process is running (closed when the process ends)


class RunConflict(RuntimeError):
    """Another live run holds this store; one line, naming it."""


def _local_store_lock() -> Path | None:
    """The lock file beside the ZenML store's SQLite database, or None when the store is a server."""
    from zenml.config.global_config import GlobalConfiguration

    url = str(GlobalConfiguration().store_configuration.url)
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///")).parent / f"{PIPELINE}.lock"


def start_run() -> None:
    """Take the store's run lock, set up the embedded stack, close orphaned runs (see the module docstring).

    Raises:
        RunConflict: another live run holds the lock (the message is one line).
    """
    global _held
    from zenml.client import Client

    from steps.mlflow_run import ensure_embedded_stack

    client = Client()
    lock = _local_store_lock()
    if lock is not None and _held is None:
        _held = locks.try_lock(lock)
        if _held is None:
            raise RunConflict(
                f"another {PIPELINE} run is live on this ZenML store ({locks.holder(lock)}); it refuses a "
                f"second one until it ends (lock file {lock}). Wait, or give this run its own stores "
                "(ZENML_CONFIG_PATH, MEDLOC_HOME)."
            )
    ensure_embedded_stack()  # under the lock: two first runs never register the stack at once
    if not steps_run_here(client):
        if _held is not None:
            _held.close()
            _held = None
        return
    if _held is not None:
        client.active_stack.experiment_tracker.configure_mlflow()  # the MLflow the run's steps log into
        close_orphaned_runs(client)


def close_orphaned_runs(client: Any) -> list[str]:
    """Fail every unfinished local ``medloc_training`` run of the store (call only while holding its lock);
    returns their names."""
    from zenml.enums import ExecutionStatus
    from zenml.models import PipelineRunUpdate, StepRunUpdate

    from medloc_core.registry import versions

    closed = []
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    runs = client.list_pipeline_runs(pipeline_name=PIPELINE, sort_by="desc:created", size=100).items
    for run in runs:
        if run.status.is_finished or not _ran_locally(run):
            continue
        steps = run.steps
        live = [name for name, step in steps.items() if not step.status.is_finished]
        step = live[0] if live else "(between steps)"
        for name in live:
            client.zen_store.update_run_step(
                steps[name].id, StepRunUpdate(status=ExecutionStatus.FAILED, end_time=now)
            )
        reason = f"killed: the process running step {step} ended without closing the run"
        client.zen_store.update_run(
            run.id, PipelineRunUpdate(status=ExecutionStatus.FAILED, status_reason=reason)
        )
        mlflow_runs = tracking.close_killed_run(pipeline_run_id=str(run.id), run_name=run.name, step=step)
        logger.warning(
            "Closed orphaned run %s (its process died in step %s): ZenML run failed, MLflow run(s) %s KILLED",
            run.name,
            step,
            ", ".join(mlflow_runs) or "(none)",
        )
        closed.append(run.name)
    versions.retire_incomplete_versions()
    return closed


def steps_run_here(client: Any = None) -> bool:
    """Whether the active stack runs the steps in this process, on this machine (the local orchestrator)."""
    from zenml.client import Client

    return (client or Client()).active_stack.orchestrator.flavor == "local"


def _ran_locally(run: Any) -> bool:
    from zenml.enums import StackComponentType

    stack = run.stack
    if stack is None:
        return False
    return any(c.flavor_name == "local" for c in stack.components.get(StackComponentType.ORCHESTRATOR, []))
