"""``medloc build-tiny-model`` and ``medloc train``: the training area of the ``medloc`` command.

Heavy imports (torch, transformers, trl) happen inside the handlers so ``medloc --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def modeling_sizes() -> list[str]:
    from medloc_core.model.standin import TINY_SIZES

    return list(TINY_SIZES)


def register(subparsers: Any) -> None:
    """Add the ``build-tiny-model`` and ``train`` subcommands."""
    p = subparsers.add_parser(
        "build-tiny-model",
        help="write the tiny offline Qwen2.5-VL (random weights, trained tokenizer, processor) to a folder",
        description=(
            "Build a deterministic, randomly initialised Qwen2.5-VL (~0.2 M parameters for 'tiny') with a "
            "tokenizer trained offline; the folder reloads with transformers' from_pretrained offline."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--size",
        choices=tuple(modeling_sizes()),
        default="tiny",
        help="tiny: plumbing tests (~0.2 M); grounder: the CPU stand-in that learns to localize (~1 M)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-pixels", type=int, default=56 * 56, help="processor's minimum image area (pixels)")
    p.add_argument(
        "--max-pixels", type=int, default=112 * 112, help="processor's maximum image area (pixels)"
    )
    p.set_defaults(func=_build_tiny_model)

    t = subparsers.add_parser(
        "train",
        help="GRPO training with the MedLoc curriculum on prepared data",
        description=(
            "Train on the split=='train' rows of a prepared table (parquet, csv or jsonl with prompt_text, "
            "image_path, in_x1..in_y2, ...). The config is a YAML/JSON file holding either the training "
            "mapping itself, a 'training' key, or a pipeline config with parameters.training. Writes "
            "checkpoints, history.jsonl (one line per step) and final/ (model + processor) under --out; "
            "re-running resumes from the last checkpoint unless --no-resume."
        ),
    )
    t.add_argument("--data", required=True, type=Path, help="prepared table (.parquet, .csv or .jsonl)")
    t.add_argument(
        "--config",
        required=True,
        type=Path,
        help="a run config (YAML, its parameters.training block) or a TrainingConfig JSON dump",
    )
    t.add_argument("--out", required=True, type=Path, help="output folder")
    t.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (VALUE parsed as YAML), e.g. --set max_steps=10",
    )
    t.set_defaults(func=_train)


def load_training_config(path: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The ``training:`` mapping to validate, with ``KEY=VALUE`` overrides applied: a run config's
    ``parameters.training`` block (YAML), or a ``TrainingConfig`` JSON dump (what ``accelerate launch`` children
    get from ``training/launch.py``)."""
    import yaml

    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        content = yaml.safe_load(text)
        parameters = content.get("parameters") if isinstance(content, Mapping) else None
        if not isinstance(parameters, Mapping) or not isinstance(parameters.get("training"), Mapping):
            raise ValueError(f"{path}: expected a run config with a parameters.training block")
        data = parameters["training"]
    data = dict(data)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        data[key.strip()] = yaml.safe_load(value)
    return data


def read_table(path: Path) -> Any:
    """Read a prepared table by extension."""
    import pandas as pd

    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl")
    raise ValueError(f"{path}: unsupported table format {suffix!r} (use .parquet, .csv or .jsonl)")


def _build_tiny_model(args: argparse.Namespace) -> int:
    from medloc_core.model.standin import build_tiny_qwen25vl

    out = build_tiny_qwen25vl(
        args.out, seed=args.seed, size=args.size, min_pixels=args.min_pixels, max_pixels=args.max_pixels
    )
    print(out)
    return 0


@contextlib.contextmanager
def _parent_mlflow_run() -> Iterator[None]:
    """Attach rank 0 to the MLflow run named by ``MLFLOW_RUN_ID`` (set by :func:`launch.launch_training`).

    Under ``accelerate launch`` every rank runs this command; only rank 0 (``RANK`` unset or ``"0"``) opens the
    run, so the per-step curriculum metrics and TRL's own (``report_to="mlflow"``, which TRL's MLflow callback
    logs from the main process only) land once, in the pipeline step's run. The variable is then removed: with
    it set, transformers' callback would start the already active run a second time and fail.
    """
    if not os.environ.get("MLFLOW_RUN_ID") or os.environ.get("RANK", "0") != "0":
        yield
        return
    import mlflow

    with mlflow.start_run(run_id=os.environ.pop("MLFLOW_RUN_ID")):
        yield


def _close_process_group() -> None:
    """End the ``accelerate launch`` process group before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads are torn down in arbitrary order and a rank can abort
    with "terminate called without an active exception" after a successful run; the whole launch then fails.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _train(args: argparse.Namespace) -> int:
    from medloc_core.run_config import FROM_PREPROCESSING, parse_block
    from medloc_core.training.session import train

    # The pipeline's own `training:` block model: the same keys, defaults and checks as a pipeline run.
    config = parse_block("training", load_training_config(args.config, args.overrides))
    manifest = Path(args.data).with_name("preprocess_manifest.json")
    if (
        manifest.is_file()
    ):  # as in the pipeline: the table's answer style and pixel bounds are the preprocessing's
        written = json.loads(manifest.read_text(encoding="utf-8"))
        config = config.model_copy(update={k: written[k] for k in FROM_PREPROCESSING if k in written})
    if config.accelerate is not None:
        raise ValueError("training.accelerate: run `accelerate launch -m medloc_core.cli train ...` instead")
    df = read_table(args.data)
    with _parent_mlflow_run():
        result = train(df, config, args.out, resume=not args.no_resume)
    _close_process_group()  # after success only: a barrier after one rank failed would wait forever
    summary = {
        "model_dir": str(result.model_dir),
        "steps": result.steps,
        "final_threshold": result.final_threshold,
        "num_raises": result.num_raises,
        "seconds_per_step": round(result.seconds_per_step, 4),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "history": str(Path(args.out) / "history.jsonl"),
    }
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, indent=2))
    return 0
