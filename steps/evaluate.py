"""Evaluation step: A@0.5, A@0.8, pseudo-mAP, mIoU with bootstrap CIs, for the trained and the base model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from medloc_core.evaluation.metrics import mlflow_metrics, paired_gain
from medloc_core.evaluation.runner import EvaluationConfig, eval_set_hash, log_prediction_grid
from medloc_core.evaluation.runner import evaluate_model as evaluate
from medloc_core.run_summary import HEADLINE, versus
from steps.mlflow_run import pipeline_mlflow_run, run_folder

logger = logging.getLogger(__name__)


@step(experiment_tracker=True)
def evaluate_model(
    prepared: pd.DataFrame, model_dir: Path, base_model: str, config: EvaluationConfig
) -> tuple[Annotated[dict, "metrics"], Annotated[dict, "base_metrics"], Annotated[str, "eval_set_hash"]]:
    """Evaluate on the held-out split; log metrics, predictions and a grid of boxes drawn on test images."""
    import mlflow

    from medloc_core.registry.versions import EVAL_TABLE_ARTIFACT  # lazy: imports mlflow

    split = config.split
    options = config.model_dump(include={"split", "max_new_tokens", "batch_size", "n_boot"})
    options["progress"] = False  # the log gets one line per evaluation instead of a progress bar
    folder = run_folder("evaluation")
    pipeline_mlflow_run()
    mlflow.log_params({f"evaluation.{k}": str(v) for k, v in config.model_dump().items()})
    metrics, predictions = evaluate(str(model_dir), prepared, **options)
    # MLflow forbids "@" in metric names: eval/A@0.5 is logged as eval/A_at_0.5 (evaluation.mlflow_key).
    mlflow.log_metrics(mlflow_metrics(metrics))
    predictions.to_csv(folder / "predictions.csv", index=False)
    mlflow.log_artifact(str(folder / "predictions.csv"), artifact_path="evaluation")
    # the rows evaluated, so `medloc evaluate --model models:/medloc-grounder/N` finds them without --data
    eval_rows = prepared if split in (None, "all") else prepared[prepared["split"] == split]
    eval_rows.to_parquet(folder / Path(EVAL_TABLE_ARTIFACT).name, index=False)
    mlflow.log_artifact(str(folder / Path(EVAL_TABLE_ARTIFACT).name), artifact_path="evaluation")
    log_prediction_grid(prepared, predictions, folder / "test_predictions.png")
    mlflow.log_artifact(str(folder / "test_predictions.png"), artifact_path="plots")

    base_metrics: dict = {}
    if config.evaluate_base:
        base_metrics, base_predictions = evaluate(base_model, prepared, **options)
        mlflow.log_metrics(
            mlflow_metrics({k.replace("eval/", "eval_base/", 1): v for k, v in base_metrics.items()})
        )
        base_predictions.to_csv(folder / "base_predictions.csv", index=False)
        mlflow.log_artifact(str(folder / "base_predictions.csv"), artifact_path="evaluation")
        gain = paired_gain(predictions, base_predictions, n_boot=options["n_boot"])
        mlflow.log_metrics(mlflow_metrics(gain))
        metrics = {**metrics, **gain}  # registered with the model: the gate's significance check reads it
        logger.info(
            "Trained model vs its starting point (%s, %d images): %s",
            split,
            len(predictions),
            "; ".join(versus(metrics, base_metrics, name) for name in HEADLINE),
        )
    headline = {
        k: metrics[k] for k in ("eval/A@0.5", "eval/A@0.8", "eval/pseudo_mAP", "eval/mIoU") if k in metrics
    }
    logger.info("Evaluation (%s split): %s", split, headline)
    # the same numbers on the ZenML step (its metadata tab), beside the MLflow run
    log_metadata(
        metadata={
            "evaluation": {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
            "evaluation_base": {k: float(v) for k, v in base_metrics.items() if isinstance(v, int | float)},
        }
    )
    return metrics, base_metrics, eval_set_hash(prepared, split)
