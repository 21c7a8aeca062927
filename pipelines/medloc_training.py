"""The product: ingestion -> preprocessing -> GRPO curriculum training -> evaluation -> registration.

Run it with ``zenml pipeline run medloc_training`` from the repository root: with no ``-c`` it runs the embedded
default, ``configs/medloc_training_local.yaml`` (the local CPU recipe, exactly what ``make run`` runs); ``-c`` selects
another recipe. From Python: ``medloc_training()`` or ``medloc_training.with_options(config_path=...)()``. Each
argument is a typed block (``medloc_core.run_config``) that ZenML validates from the YAML config's ``parameters:`` before
any step runs; an argument left out (``None``) takes that block of the embedded default.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from zenml import Model
from zenml.pipelines.pipeline_definition import Pipeline
from zenml.utils.env_utils import substitute_env_variable_placeholders

from medloc_core import environment, masking, run_config
from medloc_core.evaluation.runner import EvaluationConfig
from medloc_core.paths import export_medloc_home, medloc_home
from medloc_core.run_config import DataConfig, PreprocessingConfig, RegistrationConfig
from medloc_core.training.config import TrainingConfig
from pipelines import run_guard
from steps.evaluate import evaluate_model
from steps.ingest import ingest_data
from steps.mlflow_run import TRACKER_SETTINGS, prepare_experiment, tag_failure
from steps.preprocess import preprocess_data
from steps.register import register_model
from steps.train import train_model

EMBEDDED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "medloc_training_local.yaml"


def embedded_parameters(path: Path = EMBEDDED_CONFIG) -> dict[str, dict]:
    """The ``parameters:`` block of the embedded default config, ``${VAR}`` placeholders substituted by ZenML's
    own substitution, exactly as when the same file is passed with ``-c``."""
    export_medloc_home()  # the one placeholder every config uses: ${MEDLOC_HOME}
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return substitute_env_variable_placeholders(masking.defer(config.get("parameters") or {}))


# ZenML's Model Control Plane: every run is a version of the ZenML model `medloc-grounder` (the same name as the
# MLflow registered model), linked to the run's artifacts; the register step records the MLflow version on it
# and moves its stage with the `champion` alias.
MODEL = Model(
    name="medloc-grounder",
    description="Qwen2.5-VL grounding model trained with GRPO and the MedLoc-R1 IoU curriculum",
    tags=["medloc", "grounding", "grpo"],
)


class MedlocTrainingPipeline(Pipeline):
    """ZenML's pipeline, plus a check of the run config file when one is chosen (``-c``): read, substituted and
    validated by :func:`medloc_core.run_config.load_run_config` before ZenML parses it, so a malformed file fails in
    one line naming the file and the key instead of a traceback from inside ZenML."""

    def with_options(
        self, *args: Any, config_path: str | None = None, **kwargs: Any
    ) -> MedlocTrainingPipeline:
        environment.apply(environment.QUIET)
        if config_path is not None:
            run_config.load_run_config(config_path)  # exports MEDLOC_HOME (absolute) for ZenML's substitution
            config_path = _deferring_secrets(Path(config_path))
        return super().with_options(*args, config_path=config_path, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Before ZenML composes against the active stack: the run lock, the embedded stack (it has the MLflow
        # tracker) and the closing of runs a killed process left open (pipelines/run_guard.py).
        export_medloc_home()  # before ZenML substitutes ${MEDLOC_HOME} in the run config
        environment.apply(environment.QUIET)  # the libraries' progress bars: our progress lines replace them
        run_guard.start_run()
        return super().__call__(*args, **kwargs)


def _deferring_secrets(path: Path) -> str:
    """``path``, or where its ``parameters:`` have ``${VAR}`` placeholders, a copy with them resolved as ZenML
    resolves them, except those of secret-looking variables, passed on as ``${secret:VAR}``
    (medloc_core/masking.py): ZenML then records the name, never the value. ZenML validates the pipeline's
    typed parameters before it substitutes, so a placeholder in a checked field (a source's ``format``) must be
    resolved here. Other sections (``settings:``, ...) are ZenML's own and keep its substitution."""
    content = yaml.safe_load(path.read_text(encoding="utf-8"))  # a mapping: load_run_config checked it
    parameters = content.get("parameters") or {}
    deferred = substitute_env_variable_placeholders(masking.defer(parameters))
    if deferred == parameters:
        return str(path)
    text = yaml.safe_dump({**content, "parameters": deferred}, sort_keys=False)
    copy = (
        medloc_home() / "run-configs" / f"{path.stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    )
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(text, encoding="utf-8")
    return str(copy)


def medloc_training(
    data: DataConfig | None = None,
    preprocessing: PreprocessingConfig | None = None,
    training: TrainingConfig | None = None,
    evaluation: EvaluationConfig | None = None,
    registration: RegistrationConfig | None = None,
) -> None:
    """Train a grounding VLM with the MedLoc-R1 curriculum and register it behind a promotion gate."""
    embedded = embedded_parameters()
    data = data or run_config.parse_block("data", embedded["data"])
    if data.sources is None:  # the bundled synthetic set: the embedded config's sources, its one home
        embedded_data = run_config.parse_block("data", embedded["data"])
        data = data.model_copy(update={"sources": embedded_data.sources})
    preprocessing = preprocessing or run_config.parse_block("preprocessing", embedded["preprocessing"])
    training = training or run_config.parse_block("training", embedded["training"])
    evaluation = evaluation or run_config.parse_block("evaluation", embedded["evaluation"])
    registration = registration or run_config.parse_block("registration", embedded["registration"])
    run_config.check_agreement(preprocessing, training)  # still composing the run: no step has started
    if run_guard.steps_run_here():  # its paths are the steps' paths
        run_config.check_data_roots(data)
    if "tiny_model_dir" not in training.model_fields_set:  # the offline stand-in is built under MEDLOC_HOME
        training = training.model_copy(update={"tiny_model_dir": str(medloc_home() / "models")})
    prepare_experiment()

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
        max_new_tokens=evaluation.max_new_tokens,
    )


medloc_training = MedlocTrainingPipeline(  # what @pipeline(...) builds, with the config-file check above
    name="medloc_training",
    entrypoint=medloc_training,
    enable_cache=False,
    model=MODEL,
    settings=TRACKER_SETTINGS,
    on_failure=tag_failure,
)

#: Errors a user causes and fixes in the config or the environment: printed as one line by the CLI entry.
USER_ERRORS: tuple[type[BaseException], ...] = (run_config.ConfigError, run_guard.RunConflict)


def install_one_line_errors() -> None:
    """Print a :data:`USER_ERRORS` exception that ends the process as one line (``MEDLOC_DEBUG=1``: the whole
    traceback, as for every other error). For ``zenml pipeline run medloc_training``, whose CLI would print a
    100-line traceback from inside ZenML; installed by the ``medloc_training`` shim only."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if isinstance(exc, USER_ERRORS) and os.environ.get("MEDLOC_DEBUG", "") in ("", "0", "false"):
            print(f"medloc_training: {exc}\n(MEDLOC_DEBUG=1 prints the full trace)", file=sys.stderr)
            return
        previous(kind, exc, tb)

    sys.excepthook = hook
