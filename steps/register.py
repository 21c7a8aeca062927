"""Registration step: log the model to the MLflow registry as a challenger, promote it through the gate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from zenml import get_step_context, step
from zenml.types import HTMLString

from medloc_core.data.templates import default_query
from medloc_core.run_config import RegistrationConfig
from medloc_core.run_summary import html_report, summary_lines
from steps.mlflow_run import pipeline_mlflow_run, run_folder

logger = logging.getLogger(__name__)

#: The settings of each threshold schedule named on the model card (after its ``schedule``).
SCHEDULE_KEYS = {
    "medloc": ("curriculum.tau0", "curriculum.tau_target", "curriculum.window"),
    "medloc_spread": (
        "spread.tau0",
        "spread.tau_target",
        "spread.window",
        "spread.target_hit_rate",
        "spread.iou_weight",
    ),
    "fixed": ("fixed_tau",),
}

#: Training settings named on the model card (``training.<key>`` params of the pipeline run).
RECIPE_KEYS = (
    "model_name_or_path",
    "adapter",
    "schedule",
    "sft_warmup_steps",
    "max_steps",
    "num_generations",
    "learning_rate",
    "temperature",
    "reward_parser",
    "seed",
)


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
) -> tuple[Annotated[dict, "promotion"], Annotated[HTMLString, "run_report"]]:
    """Register ``medloc-grounder`` (alias ``challenger``) and promote it to ``champion`` if it beats the gate;
    the run's report (summary, model card, plots) is an HTML artifact ZenML's dashboard shows."""
    import mlflow

    from medloc_core.registry.card import model_card, write_model_card
    from medloc_core.registry.promote import register_and_promote
    from medloc_core.registry.versions import MODEL_NAME

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
        # a request without a query gets the training query of the (first) dataset the model learned
        default_query=default_query(next(iter(manifest["counts"]["by_dataset"]), ""), ""),
    )
    card = ""
    if result["registered"]:
        _link_control_plane(result["version"], result["promoted"], result["reasons"], metrics)
        params = mlflow.get_run(run.info.run_id).data.params  # the resolved training block, logged by train
        card = model_card(
            training=training_summary,
            metrics=metrics,
            base_metrics=base_metrics,
            manifest=manifest,
            recipe={
                key: params[f"training.{key}"] for key in _card_keys(params) if f"training.{key}" in params
            },
            run_id=run.info.run_id,
        )
        write_model_card(mlflow.MlflowClient(), MODEL_NAME, result["version"], card)
    lines = summary_lines(
        training_summary, metrics, base_metrics, result, model_name=MODEL_NAME, links=_links(run)
    )
    for line in lines:
        logger.info(line)
    plots = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="plots"))
    return result, HTMLString(html_report(lines, card, sorted(plots.glob("*.png"))))


def _card_keys(params: dict[str, str]) -> tuple[str, ...]:
    """RECIPE_KEYS with the run's schedule's own settings after ``schedule``."""
    own = SCHEDULE_KEYS.get(params.get("training.schedule", ""), ())
    at = RECIPE_KEYS.index("schedule") + 1
    return RECIPE_KEYS[:at] + own + RECIPE_KEYS[at:]


def _links(run: Any) -> list[str]:
    """Where to look: the MLflow run (``medloc ui`` opens the project's store) and the ZenML run."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    # MLflow's UI opens in its GenAI view unless the link asks for the classic one (a per-browser setting)
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        mlflow_line = f"MLflow run: {uri.rstrip('/')}/{page}"
    else:
        mlflow_line = f"MLflow run {run.info.run_id}: `medloc ui`, then http://127.0.0.1:5000/{page}"
    zenml_run = get_step_context().pipeline_run.name
    return [mlflow_line, f"ZenML run: {zenml_run} (`zenml pipeline runs describe {zenml_run}`)"]


def _link_control_plane(version: int, promoted: bool, reasons: list[str], metrics: dict) -> None:
    """Record the MLflow registry version and the gate's decision on this run's ZenML model version, and move
    its stage with the MLflow alias: ``champion`` = ``production`` (the previous one is archived),
    ``challenger`` = ``staging``."""
    from medloc_core.registry.versions import MODEL_NAME

    model = get_step_context().model
    if model is None:  # the pipeline ran without a ZenML model
        return
    headline = {k: float(v) for k, v in metrics.items() if k.count("/") == 1 and isinstance(v, int | float)}
    model.log_metadata(
        {
            "mlflow_registered_model": MODEL_NAME,
            "mlflow_version": version,
            "promoted_to_champion": promoted,
            "gate": "; ".join(reasons),
            **headline,
        }
    )
    model.set_stage("production" if promoted else "staging", force=True)
