"""Preprocessing step: group-aware split, prompts, and ground truth in the model-input frame."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

import pandas as pd
from zenml import step

from medloc_core.data.preprocess import preprocess
from medloc_core.run_config import PreprocessingConfig, preprocess_kwargs
from steps.mlflow_run import pipeline_mlflow_run


@step(experiment_tracker=True)
def preprocess_data(
    records: pd.DataFrame, ingest_report: dict, config: PreprocessingConfig
) -> tuple[Annotated[pd.DataFrame, "prepared"], Annotated[dict, "manifest"]]:
    """Split by patient/lesion group, build prompts, add input-frame boxes; return the table and a manifest
    (which carries answer style and pixel bounds on to training, evaluation and registration)."""
    import mlflow

    settings = preprocess_kwargs(config)  # every field after defaults: logged as params below
    prepared, manifest = preprocess(records, **settings)
    manifest["ingest"] = {k: ingest_report[k] for k in ("input_rows", "records", "quarantined", "hash")}
    manifest["hash"] = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()
    pipeline_mlflow_run()
    counts = prepared["split"].value_counts().to_dict()
    mlflow.log_metrics({f"data/split/{name}": float(n) for name, n in counts.items()})
    mlflow.log_param("data.manifest_hash", manifest["hash"])
    mlflow.log_params({f"preprocessing.{k}": json.dumps(v) for k, v in settings.items()})
    # The datasets themselves, per split, so the run's page lists what it was trained and tested on.
    columns = ["record_id", "dataset", "image_path", "query", "x1", "y1", "x2", "y2", "group_id"]
    for split, rows in prepared.groupby("split"):
        dataset = mlflow.data.from_pandas(rows[columns].reset_index(drop=True), name=f"{split}")
        mlflow.log_input(dataset, context=str(split))
    return prepared, manifest
