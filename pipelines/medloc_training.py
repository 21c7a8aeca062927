"""The product: ingestion -> preprocessing -> GRPO curriculum training -> evaluation -> registration.

Run it with ``zenml pipeline run medloc_training`` from the repository root: with no ``-c`` it runs the embedded
default, ``configs/medloc_training_local.yaml`` (the local CPU recipe, exactly what ``make run`` runs); ``-c`` selects
another recipe. From Python: ``medloc_training()`` or ``medloc_training.with_options(config_path=...)()``. Every
argument is a plain dict taken from the YAML config's ``parameters:`` block; an argument left out (``None``) takes
that block of the embedded default.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from zenml import Model, pipeline
from zenml.utils.env_utils import substitute_env_variable_placeholders

from medloc_core.config import validate_parameters
from medloc_core.tracking import export_medloc_home
from steps.evaluate import evaluate_model
from steps.ingest import ingest_data
from steps.mlflow_run import mark_mlflow_run_failed
from steps.preprocess import preprocess_data
from steps.register import register_model
from steps.train import train_model

export_medloc_home()  # before ZenML substitutes ${MEDLOC_HOME} in the run config

EMBEDDED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "medloc_training_local.yaml"


def embedded_parameters(path: Path = EMBEDDED_CONFIG) -> dict[str, dict]:
    """The ``parameters:`` block of the embedded default config, ``${VAR}`` placeholders substituted by ZenML's
    own substitution, exactly as when the same file is passed with ``-c``."""
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return substitute_env_variable_placeholders(config.get("parameters") or {})


# ZenML's Model Control Plane: every run is a version of the ZenML model `medloc-grounder` (the same name as the
# MLflow registered model), linked to the run's artifacts; the register step records the MLflow version on it
# and moves its stage with the `champion` alias.
MODEL = Model(
    name="medloc-grounder",
    description="Qwen2.5-VL grounding model trained with GRPO and the MedLoc-R1 IoU curriculum",
    tags=["medloc", "grounding", "grpo"],
)


@pipeline(name="medloc_training", enable_cache=False, model=MODEL, on_failure=mark_mlflow_run_failed)
def medloc_training(
    data: dict | None = None,
    preprocessing: dict | None = None,
    training: dict | None = None,
    evaluation: dict | None = None,
    registration: dict | None = None,
) -> None:
    """Train a grounding VLM with the MedLoc-R1 curriculum and register it behind a promotion gate."""
    embedded = embedded_parameters()
    data = embedded["data"] if data is None else data
    preprocessing = embedded["preprocessing"] if preprocessing is None else preprocessing
    training = embedded["training"] if training is None else training
    evaluation = embedded["evaluation"] if evaluation is None else evaluation
    registration = embedded["registration"] if registration is None else registration
    # Every key and value is checked here, while ZenML composes the run: a typo fails before any step starts.
    validate_parameters(
        data=data,
        preprocessing=preprocessing,
        training=training,
        evaluation=evaluation,
        registration=registration,
    )
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
