"""Registration step: log the model to the MLflow registry as a challenger, promote it through the gate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step

from steps.mlflow_run import run_folder, step_mlflow_run

logger = logging.getLogger(__name__)


@step
def register_model(
    model_dir: Path,
    metrics: dict,
    base_metrics: dict,
    eval_set_hash: str,
    manifest: dict,
    quarantine: pd.DataFrame,
    training_summary: dict,
    config: dict | None = None,
) -> Annotated[dict, "promotion"]:
    """Register ``medloc-grounder`` (alias ``challenger``) and promote it to ``champion`` if it beats the gate."""
    import mlflow

    from medloc_core import registry
    from medloc_core.config import RegistrationConfig

    settings = RegistrationConfig.model_validate(config or {})
    folder = run_folder("registration")
    with step_mlflow_run() as run:
        mlflow.log_params(
            {f"registration.{k}": str(v) for k, v in settings.model_dump(by_alias=True).items()}
        )
        quarantine.to_csv(folder / "quarantine.csv", index=False)
        mlflow.log_artifact(str(folder / "quarantine.csv"), artifact_path="data")
        mlflow.log_dict(manifest, "data/manifest.json")
        if not settings.register_model:
            return {"registered": False, "promoted": False, "reasons": ["registration disabled by config"]}
        blockers = registry.registration_blockers(metrics, training_summary.get("history_tail", []))
        if blockers:
            reason = "; ".join(blockers)
            mlflow.set_tag(registry.TAG_SKIPPED, reason)
            logger.warning("Registration skipped, the model is broken: %s", reason)
            return {"registered": False, "promoted": False, "reasons": blockers}
        # Serve with the prompt the model was trained and evaluated with (the preprocessing's answer style).
        options = manifest.get("options", manifest)
        answer_style = options.get("answer_style") or "think"
        version = registry.log_and_register(
            model_dir,
            metrics,
            run_id=run.info.run_id,
            eval_set_hash=eval_set_hash,
            base_metrics=base_metrics or None,
            answer_style=answer_style,
        )
        decision = registry.promote_if_better(
            version,
            margin=settings.margin,
            metric=settings.metric,
            require_beats_base=settings.require_beats_base,
            base_metrics=base_metrics or None,
        )
    _link_control_plane(int(version), bool(decision.promote), list(decision.reasons), metrics)
    result = {
        "registered": True,
        "model_name": registry.MODEL_NAME,
        "version": int(version),
        "promoted": bool(decision.promote),
        "reasons": list(decision.reasons),
    }
    logger.info(
        "Registered %s version %s; promoted to champion: %s (%s)",
        registry.MODEL_NAME,
        version,
        decision.promote,
        "; ".join(decision.reasons),
    )
    return result


def _link_control_plane(version: int, promoted: bool, reasons: list[str], metrics: dict) -> None:
    """Record the MLflow registry version and the gate's decision on this run's ZenML model version, and move
    its stage with the MLflow alias: ``champion`` = ``production`` (the previous one is archived),
    ``challenger`` = ``staging``."""
    from zenml import get_step_context

    from medloc_core import registry

    model = get_step_context().model
    if model is None:  # the pipeline ran without a ZenML model
        return
    headline = {k: float(v) for k, v in metrics.items() if k.count("/") == 1 and isinstance(v, int | float)}
    model.log_metadata(
        {
            "mlflow_registered_model": registry.MODEL_NAME,
            "mlflow_version": version,
            "promoted_to_champion": promoted,
            "gate": "; ".join(reasons),
            **headline,
        }
    )
    model.set_stage("production" if promoted else "staging", force=True)
