"""MedGRPO's cross-dataset reward normalisation (docs/method.md §6): a per-dataset logistic of the raw reward with
quartiles fitted on the starting model's completions and kept fixed during RL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medloc_core.rewards.columns import RewardFunc, dataset_column


def medgrpo_normalize(
    x: Any, p25: Any, p50: Any, p75: Any, k: float = 3.0, eps: float = 1e-6
) -> float | np.ndarray:
    """MedGRPO's per-dataset logistic normalization (docs/method.md §6): ``1 / (1 + exp(-k (x - p50) / IQR))``.

    ``IQR = p75 - p25``, floored at ``eps`` so a dataset whose quartiles coincide does not divide by 0.
    Output is in [0, 1], 0.5 at the median. Vectorized (numpy broadcasting); returns a float for scalar input.
    """
    xa = np.asarray(x, dtype=np.float64)
    iqr = np.maximum(np.asarray(p75, dtype=np.float64) - np.asarray(p25, dtype=np.float64), eps)
    z = k * (xa - np.asarray(p50, dtype=np.float64)) / iqr
    # 0.5 * (1 + tanh(z / 2)) is the logistic without overflow for large |z|.
    out = 0.5 * (1.0 + np.tanh(0.5 * z))
    return float(out) if out.ndim == 0 else out


def fit_medgrpo_stats(
    values_by_dataset: Mapping[str, Sequence[float]],
) -> dict[str, tuple[float, float, float]]:
    """Quartiles ``(p25, p50, p75)`` of a raw metric per dataset (MedGRPO takes them from the SFT model's
    predictions and keeps them fixed during RL)."""
    out = {}
    for name, values in values_by_dataset.items():
        arr = np.asarray(list(values), dtype=np.float64)
        if arr.size == 0:
            raise ValueError(f"fit_medgrpo_stats: dataset {name!r} has no values")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"fit_medgrpo_stats: dataset {name!r} has non-finite values")
        p25, p50, p75 = np.percentile(arr, [25.0, 50.0, 75.0])
        out[name] = (float(p25), float(p50), float(p75))
    return out


def make_medgrpo_normalized_reward(
    base_reward: RewardFunc,
    stats: Mapping[str, tuple[float, float, float]],
    *,
    k: float = 3.0,
    eps: float = 1e-6,
    name: str | None = None,
) -> RewardFunc:
    """Wrap a reward so each sample's value goes through its dataset's MedGRPO logistic (needs ``dataset``).

    ``stats``: dataset -> (p25, p50, p75), e.g. from :func:`fit_medgrpo_stats`. None rewards stay None.
    """
    table = {d: tuple(float(v) for v in q) for d, q in stats.items()}
    reward_name = name or f"medgrpo_{getattr(base_reward, '__name__', 'reward')}"

    def reward(prompts: Any, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        raw = base_reward(prompts, completions, **kwargs)
        datasets = dataset_column(kwargs, len(raw), reward_name, required=True)
        assert datasets is not None
        out: list[float | None] = []
        for i, (value, dataset) in enumerate(zip(raw, datasets)):
            if value is None:
                out.append(None)
                continue
            if dataset not in table:
                raise ValueError(f"{reward_name}: row {i} has dataset {dataset!r} with no MedGRPO statistics")
            p25, p50, p75 = table[dataset]
            out.append(float(medgrpo_normalize(value, p25, p50, p75, k=k, eps=eps)))
        return out

    reward.__name__ = reward.__qualname__ = reward_name
    return reward
