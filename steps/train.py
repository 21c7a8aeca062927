"""Training step: GRPO with the MedLoc curriculum (``medloc_core.training``), traced into MLflow per step."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step

from medloc_core import tracking
from steps.mlflow_run import step_mlflow_run

logger = logging.getLogger(__name__)


def training_folder(config: dict, manifest: dict) -> Path:
    """A folder keyed by (config, data): re-running after a crash resumes from its last checkpoint."""
    key = hashlib.sha256(
        json.dumps({"config": config, "data": manifest.get("hash")}, sort_keys=True, default=str).encode()
    ).hexdigest()[:12]
    folder = tracking.medloc_home() / "runs" / f"train-{key}"
    if (folder / "final").exists():  # a finished run with the same key: train again from scratch
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@step
def train_model(
    prepared: pd.DataFrame, manifest: dict, config: dict | None = None
) -> tuple[
    Annotated[Path, "model_dir"],
    Annotated[str, "base_model"],
    Annotated[dict, "training_summary"],
]:
    """Fine-tune the policy with GRPO; log params, the per-step curriculum trace and training plots."""
    from medloc_core.launch import launch_training
    from medloc_core.training import TrainingConfig, resolve_model_path, train

    config = dict(config or {})
    launch = config.pop("accelerate", None)
    # The processor must resize exactly as preprocessing framed the boxes; the tiny model lives in MEDLOC_HOME.
    options = manifest.get("options", manifest)
    config.update(
        {
            k: options[k]
            for k in ("min_pixels", "max_pixels", "answer_style")
            if k not in config and k in options
        }
    )
    config.setdefault("tiny_model_dir", str(tracking.medloc_home() / "models"))
    train_config = TrainingConfig.from_dict(config)
    folder = training_folder(config, manifest)
    with step_mlflow_run() as run:
        tracking.log_training_config(train_config, launch, str(manifest.get("hash", "")))
        if launch and int(launch.get("num_processes", 1)) > 1:  # multi-GPU: `accelerate launch` children
            result = launch_training(
                prepared, config, folder, accelerate=launch, mlflow_run_id=run.info.run_id
            )
        else:
            outcome = train(prepared, train_config, folder)
            result = {**dataclasses.asdict(outcome), "model_dir": str(outcome.model_dir)}
        summary = tracking.log_training_result(result, folder, train_config.schedule)
    logger.info("Training finished: %s", {k: v for k, v in summary.items() if k != "history_tail"})
    # The base (the policy GRPO started from: the hub id or the SFT warm-up folder) travels as a name/path.
    base_model = (
        str(folder / "sft") if train_config.sft_warmup_steps > 0 else resolve_model_path(train_config)
    )
    return Path(result["model_dir"]), base_model, summary
