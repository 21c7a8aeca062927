"""Training step: GRPO with the MedLoc curriculum (``medloc_core.training``), traced into MLflow per step."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from medloc_core import locks, tracking
from medloc_core.run_config import FROM_PREPROCESSING
from medloc_core.training.config import TrainingConfig, resolve_model_path
from medloc_core.training.launch import launch_training
from medloc_core.training.session import train
from steps.mlflow_run import pipeline_mlflow_run

logger = logging.getLogger(__name__)


def training_folder(config: dict, manifest: dict) -> Path:
    """A folder keyed by (config, data): re-running after a crash resumes from its last checkpoint."""
    key = hashlib.sha256(
        json.dumps({"config": config, "data": manifest.get("hash")}, sort_keys=True, default=str).encode()
    ).hexdigest()[:12]
    return tracking.medloc_home() / "runs" / f"train-{key}"


@contextlib.contextmanager
def claimed(folder: Path) -> Iterator[Path]:
    """Hold ``folder`` for this run: a second live run with the same config and data fails at once, naming
    the holder, instead of resuming from or rotating away this run's checkpoints. A finished run's folder
    (``final/``) is cleared, so the same key trains again from scratch."""
    with locks.held(folder.with_name(folder.name + ".lock"), f"training folder {folder}"):
        if (folder / "final").exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


@step(experiment_tracker=True)
def train_model(
    prepared: pd.DataFrame, manifest: dict, config: TrainingConfig
) -> tuple[
    Annotated[Path, "model_dir"],
    Annotated[str, "base_model"],
    Annotated[dict, "training_summary"],
]:
    """Fine-tune the policy with GRPO; log params, the per-step curriculum trace and training plots."""

    # The prompts' answer style and the processor's resize bounds are the preprocessing's (the boxes were framed
    # with them); they come from the manifest, never from a second copy of the setting.
    # The step's parameter is already the parsed TrainingConfig (validated once, when ZenML composed the run).
    train_config = config.model_copy(update={k: manifest[k] for k in FROM_PREPROCESSING})
    resolved = train_config.model_dump(mode="json")
    launch = config.accelerate.model_dump(exclude_defaults=True) if config.accelerate else None
    run = pipeline_mlflow_run()
    tracking.log_training_config(train_config, launch, str(manifest.get("hash", "")))
    with claimed(training_folder(resolved, manifest)) as folder:
        if (
            config.accelerate and config.accelerate.num_processes > 1
        ):  # multi-GPU: `accelerate launch` children
            result = launch_training(
                prepared, train_config, folder, accelerate=launch, mlflow_run_id=run.info.run_id
            )
        else:
            outcome = train(prepared, train_config, folder)
            result = {**dataclasses.asdict(outcome), "model_dir": str(outcome.model_dir)}
    summary = tracking.log_training_result(result, folder, train_config.schedule)
    logger.info(
        "Training finished: %d GRPO steps at %.2f s/step, final τ %s, peak RSS %.0f MB; model in %s",
        summary["steps"],
        summary["seconds_per_step"],
        "none" if summary["final_threshold"] is None else f"{summary['final_threshold']:.2f}",
        summary["peak_rss_mb"],
        result["model_dir"],
    )
    log_metadata(
        metadata={"training": {k: v for k, v in summary.items() if k not in ("history_tail", "sft")}}
    )
    # The base (the policy GRPO started from: the hub id or the SFT warm-up folder) travels as a name/path.
    base_model = (
        str(folder / "sft") if train_config.sft_warmup_steps > 0 else resolve_model_path(train_config)
    )
    return Path(result["model_dir"]), base_model, summary
