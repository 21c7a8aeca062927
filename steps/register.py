"""Registration step: log the model to the MLflow registry as a challenger, promote it through the gate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step

from medloc_core.run_config import RegistrationConfig
from steps.mlflow_run import pipeline_mlflow_run, run_folder

logger = logging.getLogger(__name__)


@step(experiment_tracker=True)
def register_model(
    model_dir: Path,
    metrics: dict,
    base_metrics: dict,
    eval_set_hash: str,
    manifest: dict,
    quarantine: pd.DataFrame,
    training_summary: dict,
    config: RegistrationConfig,
    max_new_tokens: int,
) -> Annotated[dict, "promotion"]:
    """Register ``medloc-grounder`` (alias ``challenger``) and promote it to ``champion`` if it beats the gate."""
    import mlflow

    from medloc_core.registry.promote import register_and_promote

    folder = run_folder("registration")
    run = pipeline_mlflow_run()
    mlflow.log_params({f"registration.{k}": str(v) for k, v in config.model_dump(by_alias=True).items()})
    quarantine.to_csv(folder / "quarantine.csv", index=False)
    mlflow.log_artifact(str(folder / "quarantine.csv"), artifact_path="data")
    mlflow.log_dict(manifest, "data/manifest.json")
    result = register_and_promote(
        model_dir,
        metrics,
        base_metrics,
        run_id=run.info.run_id,
        eval_set_hash=eval_set_hash,
        # serve with the prompt the model was trained and evaluated with (the preprocessing's answer style)
        answer_style=manifest["answer_style"],
        max_new_tokens=max_new_tokens,  # the evaluation's: the served model generates as it was measured
        history_tail=training_summary.get("history_tail", []),
        settings=config,
    )
    if result["registered"]:
        _link_control_plane(result["version"], result["promoted"], result["reasons"], metrics)
        logger.info(
            "Registered version %s; champion: %s (%s)",
            result["version"],
            result["promoted"],
            "; ".join(result["reasons"]),
        )
    return result


def _link_control_plane(version: int, promoted: bool, reasons: list[str], metrics: dict) -> None:
    """Record the MLflow registry version and the gate's decision on this run's ZenML model version, and move
    its stage with the MLflow alias: ``champion`` = ``production`` (the previous one is archived),
    ``challenger`` = ``staging``."""
    from zenml import get_step_context

    from medloc_core.registry import versions

    model = get_step_context().model
    if model is None:  # the pipeline ran without a ZenML model
        return
    headline = {k: float(v) for k, v in metrics.items() if k.count("/") == 1 and isinstance(v, int | float)}
    model.log_metadata(
        {
            "mlflow_registered_model": versions.MODEL_NAME,
            "mlflow_version": version,
            "promoted_to_champion": promoted,
            "gate": "; ".join(reasons),
            **headline,
        }
    )
    model.set_stage("production" if promoted else "staging", force=True)
