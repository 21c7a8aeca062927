"""Multi-GPU training through ``accelerate launch``: the training runs in child processes, one per GPU.

The pipeline's training step calls :func:`launch_training` when the config holds an ``accelerate`` block
(``{num_processes: 4, mixed_precision: bf16}``). The prepared table and the training mapping are written to the
output folder, ``accelerate launch -m medloc_core.cli train`` runs on them, and the result is read back from
``final/medloc_training.json`` and ``history.jsonl``. Per-step metrics reach the caller's MLflow run because the
child processes inherit ``MLFLOW_RUN_ID`` (only rank 0 logs).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medloc_core.training.config import AccelerateConfig, TrainingConfig

logger = logging.getLogger(__name__)


def accelerate_command(options: Mapping[str, Any]) -> list[str]:
    """``accelerate launch`` arguments from an ``accelerate`` config block, checked by ``config.AccelerateConfig``
    (unknown keys and bad values raise pydantic's ``ValidationError``, a ``ValueError``)."""

    options = AccelerateConfig.model_validate(dict(options)).model_dump(exclude_defaults=True)
    num = int(options.get("num_processes", 1))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num)]
    if num > 1:
        # torchrun-style launcher; for `cpu: true` the ranks form a gloo group because the training config sets
        # use_cpu (accelerate's own --cpu flag would fall back to a single process).
        command.append("--multi_gpu")
    elif options.get("cpu"):
        command.append("--cpu")
    if options.get("mixed_precision"):
        command += ["--mixed_precision", str(options["mixed_precision"])]
    if options.get("num_machines"):
        command += ["--num_machines", str(int(options["num_machines"]))]
    if options.get("main_process_port"):
        command += ["--main_process_port", str(int(options["main_process_port"]))]
    command += [str(a) for a in options.get("extra_args", [])]
    return command


def launch_training(
    prepared_df: Any,
    training: TrainingConfig,
    output_dir: str | os.PathLike,
    *,
    accelerate: Mapping[str, Any],
    mlflow_run_id: str | None = None,
) -> dict[str, Any]:
    """Run ``medloc train`` under ``accelerate launch``; return the training summary (with ``history``)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "prepared.parquet"
    prepared_df.to_parquet(data, index=False)
    if accelerate.get("cpu"):
        training = training.model_copy(update={"use_cpu": True})
    config = (
        out / "training_config.json"
    )  # the same TrainingConfig, read back by the children's `medloc train`
    config.write_text(training.model_dump_json(indent=2, exclude={"accelerate"}), encoding="utf-8")
    command = [
        *accelerate_command(accelerate),
        "-m",
        "medloc_core.cli",
        "train",
        "--data",
        str(data),
        "--config",
        str(config),
        "--out",
        str(out),
    ]
    env = dict(os.environ)
    if mlflow_run_id:
        import mlflow

        # The children log into the step's run on the stack tracker's store (set in-process, not in the env).
        env["MLFLOW_RUN_ID"] = mlflow_run_id
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    logger.info("launching: %s", shlex.join(command))
    code = subprocess.call(command, env=env)
    if code != 0:
        raise RuntimeError(f"accelerate launch exited with code {code}: {shlex.join(command)}")
    summary = json.loads((out / "final" / "medloc_training.json").read_text())
    history_file = out / "history.jsonl"
    summary["history"] = [json.loads(x) for x in history_file.read_text().splitlines() if x.strip()]
    return summary
