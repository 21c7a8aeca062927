"""Where MLflow and local state live, and one MLflow run per pipeline run.

The embedded default keeps everything inside the project: ``MEDLOC_HOME`` (default ``./.medloc``) holds the
MLflow SQLite store (``mlflow/mlflow.db``), MLflow artifacts (``mlflow/artifacts``), generated datasets and the
tiny model. ``MLFLOW_TRACKING_URI``, when set, always wins.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medloc_core import run_summary
from medloc_core.paths import medloc_home

logger = logging.getLogger(__name__)

EXPERIMENT = "medloc"
RUN_ID_TAG = "medloc.pipeline_run_id"


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: The last training steps whose dead-group rates the summary carries (the registration gate reads them).
DEAD_TAIL_STEPS = 10


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite file under :func:`medloc_home`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = medloc_home() / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def tag_experiment_kind(experiment: Any) -> None:
    """Give an existing MLflow ``Experiment`` the classic-ML kind tag (MLflow 3's UI opens an experiment by its
    kind) when it lacks one: one made by an older version, or by ZenML's tracker on a remote server."""
    import mlflow

    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )


def configure_mlflow(experiment: str = EXPERIMENT, uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default :func:`tracking_uri`) and make sure the experiment exists; return its id.

    With a local SQLite store the experiment is created with an artifact location under ``MEDLOC_HOME``:
    MLflow's default would be ``./mlruns`` in whatever the working directory happens to be.
    """
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        tag_experiment_kind(existing)
        mlflow.set_experiment(experiment_id=existing.experiment_id)
        return existing.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:") or uri.startswith("file:"):
        artifact_location = (medloc_home() / "mlflow" / "artifacts").as_uri()
    elif os.environ.get("MEDLOC_MLFLOW_ARTIFACT_LOCATION"):
        artifact_location = os.environ["MEDLOC_MLFLOW_ARTIFACT_LOCATION"]
    # MLflow 3's UI opens an experiment by its kind; this one is classic model training, not GenAI tracing.
    experiment_id = mlflow.create_experiment(
        experiment, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_history_rows(rows: Iterable[Mapping[str, Any]], *, up_to_step: int) -> int:
    """Log per-step history rows (``{"step": n, metric: value, ...}``) with ``step <= up_to_step`` to the active run.

    Used after a resumed training: the steps done before the crash were logged into the crashed pipeline run's
    MLflow run, so the new run gets them from ``history.jsonl`` and its trace is complete again. Returns how many
    rows were logged.
    """
    import mlflow
    from mlflow.entities import Metric

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_history_rows needs an active MLflow run")
    now = int(time.time() * 1000)
    metrics, count = [], 0
    for row in rows:
        step = int(row["step"])
        if step > up_to_step:
            continue
        count += 1
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                metrics.append(Metric(key, float(value), now, step))
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
        client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])
    return count


# ------------------------------------------------------------------------------------------- training


SUMMARY_KEYS = ("steps", "final_threshold", "num_raises", "seconds_per_step", "peak_rss_mb")


def flatten_params(prefix: str, value: Any, out: dict[str, str] | None = None) -> dict[str, str]:
    """Nested settings -> ``{"prefix.key.sub": "value"}`` MLflow params (lists as JSON)."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for key, item in value.items():
            flatten_params(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


def log_training_config(config: Any, accelerate: Mapping[str, Any] | None, manifest_hash: str) -> None:
    """The resolved training config as params: every ``TrainingConfig`` field after defaults, the curriculum's,
    the spread schedule's and the ``accelerate`` block, plus the dataset manifest hash."""

    import mlflow

    resolved = config.model_dump(mode="json", exclude={"accelerate"})
    resolved["curriculum"] = config.curriculum_settings.model_dump(mode="json")
    resolved["spread"] = config.spread_settings.model_dump(mode="json")
    if accelerate:
        resolved["accelerate"] = dict(accelerate)
    params = flatten_params("training", resolved)
    params["data.manifest_hash"] = manifest_hash
    mlflow.log_params(params)


def log_training_result(result: Mapping[str, Any], folder: Path, schedule: str) -> dict[str, Any]:
    """Log a finished training into the active run and return its summary: the steps a crashed run logged
    (after a resume), the plots, ``history.jsonl``, the SFT warm-up's loss curve and val checks, the summary
    metrics; the summary carries the last steps' dead-group rates for the registration gate."""
    import mlflow

    from medloc_core import plots  # lazy: matplotlib costs a second at import

    if result.get("resumed_from"):
        # Steps before the crash went to the crashed run's MLflow run; copy them so this trace is complete.
        resumed_step = int(Path(result["resumed_from"]).name.split("-")[-1])
        copied = log_history_rows(result["history"], up_to_step=resumed_step)
        logger.info(
            "resumed from %s: copied %d earlier steps into this MLflow run", result["resumed_from"], copied
        )
    for name, make in (
        ("rewards.png", plots.plot_rewards),
        ("curriculum.png", plots.plot_curriculum),
        ("dead_groups.png", plots.plot_dead_groups),
    ):
        mlflow.log_figure(make(result["history"]), f"plots/{name}")
    mlflow.log_artifact(str(Path(folder) / "history.jsonl"), artifact_path="training")
    sft = dict(result.get("sft") or {})
    losses = sft.pop("losses", None) or []
    if losses:  # the SFT warm-up's learning curve, one point per SFT step, and its early-stop checks
        rows = [{"step": i, "sft/loss": v} for i, v in enumerate(losses, start=1)]
        rows += [{"step": int(step), "sft/val_hit_rate": v} for step, v in sft.get("val_checks") or []]
        log_history_rows(rows, up_to_step=len(losses))
    summary: dict[str, Any] = {key: result[key] for key in SUMMARY_KEYS}
    summary["schedule"] = schedule
    summary["sft"] = sft or None
    summary["tau_raises"] = run_summary.tau_raises(result["history"])
    mlflow.log_metrics(
        {f"train/summary/{k}": float(v) for k, v in summary.items() if isinstance(v, int | float)}
    )
    summary["history_tail"] = [
        {"step": r.get("step"), "train/frac_reward_zero_std": r.get("train/frac_reward_zero_std")}
        for r in result["history"][-DEAD_TAIL_STEPS:]
    ]
    return summary


FAILED_STEP_TAG = "medloc.failed_step"
ERROR_TAG = "medloc.error"


def close_killed_run(
    *, pipeline_run_id: str, run_name: str, step: str, experiment: str = EXPERIMENT
) -> list[str]:
    """Mark the MLflow run(s) of a pipeline run whose process died ``KILLED``, tagged with the ``step`` that was
    running; returns their ids. Found by MedLoc's pipeline-run tag or, if the process died before the first
    step tagged it, by the run name ZenML's tracker gives it. A run killed between steps shows ``FINISHED``
    (the tracker ends it after every step) and is closed the same way."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    quoted = run_name.replace("'", "")
    runs = {
        run.info.run_id: run
        for query in (f"tags.`{RUN_ID_TAG}` = '{pipeline_run_id}'", f"attributes.run_name = '{quoted}'")
        for run in client.search_runs([found.experiment_id], filter_string=query, max_results=10)
    }
    closed = []
    for run_id, run in runs.items():
        if run.info.status in ("KILLED", "FAILED"):
            continue
        client.set_tag(run_id, FAILED_STEP_TAG, step)
        client.set_tag(
            run_id, ERROR_TAG, f"killed: the process running step {step} ended without closing the run"
        )
        client.set_terminated(run_id, status="KILLED")
        closed.append(run_id)
    return closed
