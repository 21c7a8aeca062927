"""MedGRPO's per-dataset reward normalisation: quartiles fitted on completions of the starting model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medloc_core.training.config import TrainingConfig
from medloc_core.training.warmup import generate_completions

logger = logging.getLogger(__name__)


def fit_medgrpo(
    model: Any,
    processor: Any,
    examples: Sequence[Mapping[str, Any]],
    base_reward: Callable,
    config: TrainingConfig,
) -> dict[str, list[float]]:
    """Quartiles of ``base_reward`` per dataset over completions of the starting model (MedGRPO, §4)."""
    import random

    from medloc_core.rewards import fit_medgrpo_stats

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
