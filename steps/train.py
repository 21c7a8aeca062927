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

SUMMARY_KEYS = ("steps", "final_threshold", "num_raises", "seconds_per_step", "peak_rss_mb")


def _flatten(prefix: str, value: object, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


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
    import mlflow

    from medloc_core import plots
    from medloc_core.launch import launch_training
    from medloc_core.training import TrainingConfig, resolve_model_path, train

    config = dict(config or {})
    launch = config.pop("accelerate", None)
    # The processor must resize exactly as preprocessing framed the boxes; the tiny model lives in MEDLOC_HOME.
    options = manifest.get("options", manifest)
    for key in ("min_pixels", "max_pixels", "answer_style"):
        if key not in config and key in options:
            config[key] = options[key]
    config.setdefault("tiny_model_dir", str(tracking.medloc_home() / "models"))
    train_config = TrainingConfig.from_dict(config)
    folder = training_folder(config, manifest)
    with step_mlflow_run() as run:
        # The resolved config: every field after defaults (and the curriculum's), not only the keys given.
        resolved = train_config.to_dict()
        resolved["curriculum"] = dataclasses.asdict(train_config.curriculum_config())
        if launch:
            resolved["accelerate"] = dict(launch)
        params = _flatten("training", resolved, {})
        params["data.manifest_hash"] = str(manifest.get("hash", ""))
        mlflow.log_params(params)
        if launch and int(launch.get("num_processes", 1)) > 1:
            # Multi-GPU: child processes under `accelerate launch`, logging into this same MLflow run.
            result = launch_training(
                prepared, config, folder, accelerate=launch, mlflow_run_id=run.info.run_id
            )
        else:
            outcome = train(prepared, train_config, folder)
            result = {**dataclasses.asdict(outcome), "model_dir": str(outcome.model_dir)}
        if result.get("resumed_from"):
            # Steps before the crash went to the crashed run's MLflow run; copy them so this trace is complete.
            resumed_step = int(Path(result["resumed_from"]).name.split("-")[-1])
            copied = tracking.log_history_rows(result["history"], up_to_step=resumed_step)
            logger.info(
                "resumed from %s: copied %d earlier steps into this MLflow run",
                result["resumed_from"],
                copied,
            )
        for name, make in (
            ("rewards.png", plots.plot_rewards),
            ("curriculum.png", plots.plot_curriculum),
            ("dead_groups.png", plots.plot_dead_groups),
        ):
            mlflow.log_figure(make(result["history"]), f"plots/{name}")
        mlflow.log_artifact(str(Path(folder) / "history.jsonl"), artifact_path="training")
        sft = dict(result.get("sft") or {})
        losses = sft.pop("losses", None) or []
        if losses:  # the SFT warm-up's learning curve, one point per SFT step, and its early-stop checks
            rows = [{"step": i, "sft/loss": v} for i, v in enumerate(losses, start=1)]
            rows += [{"step": int(step), "sft/val_hit_rate": v} for step, v in sft.get("val_checks") or []]
            tracking.log_history_rows(rows, up_to_step=len(losses))
        summary = {key: result[key] for key in SUMMARY_KEYS}
        summary["schedule"] = train_config.schedule
        summary["sft"] = sft or None
        mlflow.log_metrics(
            {f"train/summary/{k}": float(v) for k, v in summary.items() if isinstance(v, int | float)}
        )
    logger.info("Training finished: %s", summary)
    from medloc_core import registry

    # The last steps' dead-group rates travel with the summary: registration refuses a model whose GRPO had
    # no gradient at the end (registry.registration_blockers).
    summary["history_tail"] = [
        {"step": r.get("step"), "train/frac_reward_zero_std": r.get("train/frac_reward_zero_std")}
        for r in result["history"][-registry.DEAD_TAIL_STEPS :]
    ]
    # The base (the policy GRPO started from: the hub id, or the SFT warm-up folder) travels as a name/path,
    # not a copy: a 3B base model is not worth duplicating into the artifact store.
    base_model = (
        str(folder / "sft") if train_config.sft_warmup_steps > 0 else resolve_model_path(train_config)
    )
    return Path(result["model_dir"]), base_model, summary
