"""The product: ingestion -> preprocessing -> GRPO curriculum training -> evaluation -> registration.

Run it with ``zenml pipeline run medloc_training -c configs/medloc_training_local.yaml`` from the repository
root, or from Python with ``medloc_training.with_options(config_path=...)()``. Every argument is a plain dict
taken from the YAML config's ``parameters:`` block; ``None`` means the library defaults (the local CPU run).
"""

from __future__ import annotations

from zenml import pipeline

from medloc_core.tracking import export_medloc_home
from steps.evaluate import evaluate_model
from steps.ingest import ingest_data
from steps.preprocess import preprocess_data
from steps.register import register_model
from steps.train import train_model

export_medloc_home()  # before ZenML substitutes ${MEDLOC_HOME} in the run config


@pipeline(name="medloc_training", enable_cache=False)
def medloc_training(
    data: dict | None = None,
    preprocessing: dict | None = None,
    training: dict | None = None,
    evaluation: dict | None = None,
    registration: dict | None = None,
) -> None:
    """Train a grounding VLM with the MedLoc-R1 curriculum and register it behind a promotion gate."""
    records, quarantine, ingest_report = ingest_data(config=data)
    prepared, manifest = preprocess_data(records=records, ingest_report=ingest_report, config=preprocessing)
    model_dir, base_model, training_summary = train_model(
        prepared=prepared, manifest=manifest, config=training
    )
    metrics, base_metrics, eval_set_hash = evaluate_model(
        prepared=prepared, model_dir=model_dir, base_model=base_model, config=evaluation
    )
    register_model(
        model_dir=model_dir,
        metrics=metrics,
        base_metrics=base_metrics,
        eval_set_hash=eval_set_hash,
        manifest=manifest,
        quarantine=quarantine,
        training_summary=training_summary,
        config=registration,
    )
