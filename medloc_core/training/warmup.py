"""What runs on the starting policy before GRPO: the SFT warm-up (early stop on the greedy val hit rate at τ0) and
MedGRPO's quartile fit on its completions; greedy/sampled generation helpers; the CPU thread choice for small
models.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medloc_core.boxes import iou as box_iou
from medloc_core.boxes import parse_box
from medloc_core.model import loading
from medloc_core.model.inference import generate
from medloc_core.rewards.medgrpo import fit_medgrpo_stats
from medloc_core.training import sft
from medloc_core.training.config import SFT_DONE_NAME, TrainingConfig
from medloc_core.training.rows import build_examples, check_frames, train_rows

logger = logging.getLogger(__name__)


def generate_completions(
    model: Any,
    processor: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int,
    temperature: float | None,
    batch_size: int = 8,
) -> list[str]:
    """One completion per example (``prompt`` messages + ``image``): sampled at ``temperature`` (MedGRPO's
    statistics), or greedy with ``temperature=None`` (the SFT early-stop check)."""

    out: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            texts, _ = generate(
                model,
                processor,
                [e["prompt"] for e in chunk],
                [e["image"] for e in chunk],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
            )
            out += texts
    finally:
        model.train(was_training)
    return out


SMALL_MODEL_PARAMS = 50_000_000


def configure_threads(config: TrainingConfig, model: Any) -> int:
    """Apply ``config.torch_threads`` (see :class:`TrainingConfig`); returns the thread count in effect."""
    import torch

    threads = config.torch_threads
    on_cpu = config.use_cpu or not torch.cuda.is_available()
    if threads is None and on_cpu and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def sft_stop_iou(config: TrainingConfig) -> float:
    """The IoU of the SFT early-stop check: ``sft_stop_iou``, else where the schedule starts."""
    if config.sft_stop_iou is not None:
        return config.sft_stop_iou
    if config.schedule == "medloc":
        return config.curriculum_settings.tau0
    if config.schedule == "medloc_spread":
        return config.spread_settings.tau0
    return config.fixed_tau if config.schedule == "fixed" else 0.5


def greedy_hit_rate(
    model: Any, processor: Any, examples: Sequence[Mapping[str, Any]], *, iou: float, max_new_tokens: int
) -> float:
    """Share of ``examples`` whose greedy answer parses to a box with IoU >= ``iou`` (input-frame pixels)."""

    texts = generate_completions(
        model, processor, examples, max_new_tokens=max_new_tokens, temperature=None, batch_size=32
    )
    hits = 0
    for e, text in zip(examples, texts):
        box = parse_box(text)
        hits += int(box is not None and box_iou(tuple(box), tuple(e["bbox"])) >= iou)
    return hits / len(examples) if examples else 0.0


def sft_val_examples(prepared_df: Any, config: TrainingConfig, processor: Any) -> list[dict] | None:
    """The ``val`` split as examples for the SFT early-stop check (None when it is off or there is no val)."""
    if config.sft_stop_hit_rate is None or not (prepared_df["split"] == "val").any():
        return None
    rows = train_rows(prepared_df, "val")
    check_frames(rows, processor)
    return build_examples(rows, config.answer_style)


def run_sft_warmup(
    config: TrainingConfig,
    model_path: str,
    processor: Any,
    examples: list[dict],
    output_dir: Path,
    val_examples: list[dict] | None = None,
):
    """SFT warm-up into ``output_dir/sft`` (skipped when a finished one is there). Returns (path, summary)."""

    sft_dir = output_dir / "sft"
    done = sft_dir / SFT_DONE_NAME
    stop = config.sft_stop_hit_rate if val_examples else None
    if config.sft_stop_hit_rate is not None and not val_examples:
        logger.warning(
            "sft_stop_hit_rate is set but there is no 'val' split: the SFT warm-up runs all its steps"
        )
    if done.is_file():
        summary = json.loads(done.read_text(encoding="utf-8"))
        wanted = {
            "max_steps": config.sft_warmup_steps,
            "base_model": model_path,
            "lr_schedule": config.sft_lr_scheduler_type,
            "batch_size": config.sft_batch_size,
            "stop_hit_rate": stop,
            "stop_iou": sft_stop_iou(config) if stop is not None else None,
            "check_every": config.sft_check_every if stop is not None else None,
        }
        if all(summary.get(k) == v for k, v in wanted.items()):
            logger.info("reusing finished SFT warm-up in %s", sft_dir)
            return str(sft_dir), summary
    import torch

    torch.manual_seed(config.seed)
    model = loading.load_model(model_path, dtype="float32")  # fp32 master weights; bf16 only in autocast
    if not config.use_cpu and torch.cuda.is_available():
        model.to("cuda")
    configure_threads(config, model)
    lr = config.sft_learning_rate
    if lr is None:
        lr = 3e-3 if config.is_tiny else 1e-5
    sft_examples = [sft.SFTExample(e["prompt"], e["image"], e["target"]) for e in examples]
    stop_iou = sft_stop_iou(config)

    def val_hit_rate(step: int, policy: Any = model) -> float:
        return greedy_hit_rate(
            policy, processor, val_examples, iou=stop_iou, max_new_tokens=config.max_completion_length
        )

    res = sft.sft_warmup(
        model,
        processor,
        sft_examples,
        steps=config.sft_warmup_steps,
        learning_rate=lr,
        batch_size=config.sft_batch_size,
        seed=config.seed,
        progress=config.progress,
        bf16=config.bf16,
        lr_schedule=config.sft_lr_scheduler_type,
        stop_when=val_hit_rate if stop is not None else None,
        check_every=config.sft_check_every,
        stop_at=stop if stop is not None else 1.0,
    )
    if sft_dir.exists():
        shutil.rmtree(sft_dir)
    model.save_pretrained(str(sft_dir))
    processor.save_pretrained(str(sft_dir))
    summary = {
        "steps": res.steps,
        "max_steps": config.sft_warmup_steps,
        "stop_hit_rate": stop,
        "stop_iou": stop_iou if stop is not None else None,
        "check_every": config.sft_check_every if stop is not None else None,
        "stopped_early": res.stopped_early,
        "val_checks": [list(c) for c in res.checks],
        "learning_rate": lr,
        "first_loss": res.first_loss,
        "last_loss": res.last_loss,
        "seconds": res.seconds,
        "base_model": model_path,
        "lr_schedule": config.sft_lr_scheduler_type,
        "batch_size": config.sft_batch_size,
        "losses": [round(v, 4) for v in res.losses],
    }
    done.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    del model
    return str(sft_dir), summary


def fit_medgrpo(
    model: Any,
    processor: Any,
    examples: Sequence[Mapping[str, Any]],
    base_reward: Callable,
    config: TrainingConfig,
) -> dict[str, list[float]]:
    """Quartiles of ``base_reward`` per dataset over completions of the starting model (MedGRPO, docs/method.md §6)."""
    import random

    rng = random.Random(config.seed)
    by_ds: dict[str, list[Mapping[str, Any]]] = {}
    for e in examples:
        by_ds.setdefault(e["dataset"], []).append(e)
    picked = []
    for _, items in sorted(by_ds.items()):
        picked += rng.sample(items, min(len(items), config.medgrpo_fit_samples))
    texts = generate_completions(
        model, processor, picked, max_new_tokens=config.max_completion_length, temperature=config.temperature
    )
    values = base_reward(
        prompts=[e["prompt"] for e in picked],
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        bbox=[e["bbox"] for e in picked],
        dataset=[e["dataset"] for e in picked],
    )
    grouped: dict[str, list[float]] = {}
    for e, v in zip(picked, values):
        grouped.setdefault(e["dataset"], []).append(float(v))
    return {k: list(v) for k, v in fit_medgrpo_stats(grouped).items()}
