"""Dynamic sampling (DAPO's filter, here on TRL's ``GRPOTrainer``): a GRPO group whose rewards have zero spread
has zero advantage everywhere and teaches nothing, so the trainer draws extra groups and fills the batch with
groups that have spread (docs/curriculum.md §4).

This module holds the tensor side, no trainer: which groups are live (:func:`live_groups`), the extra prompts a
draw uses (:func:`extra_prompt_indices`) and the merge of several scored draws into one batch of the original
shape (:func:`fill_batch`). ``MedLocGRPOTrainer._generate_and_score_completions`` (``training/trainer.py``) drives
it. A batch here is the dict TRL's ``_generate_and_score_completions`` returns for one rank: rows are completions,
``num_generations`` consecutive rows are one group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: An advantage this small is zero: TRL computes (r - mean) / (std + 1e-4), and the mean of equal floats can be
#: off by an ulp, so a zero-spread group's advantages are ~1e-12, never exactly 0.
ZERO_ADVANTAGE = 1e-6

# How each per-row tensor TRL returns is padded when draws of different widths are merged.
_LEFT_PADDED = ("prompt_ids", "prompt_mask")
# Prompt part (left-padded) followed by the completion part (zeros), as TRL builds them.
_PROMPT_THEN_COMPLETION = ("mm_token_type_ids", "token_type_ids")
_RIGHT_PADDED = {
    "completion_ids": None,  # the pad token id
    "completion_mask": 0,
    "old_per_token_logps": 0.0,
    "sampling_per_token_logps": 0.0,
    "ref_per_token_logps": 0.0,
    "importance_sampling_ratio": 1.0,
    "tool_mask": 1,
}
_PER_ROW_LISTS = ("pixel_values", "image_grid_thw", "num_images", "image_position_ids", "image_sizes")


def live_groups(advantages: Any, num_generations: int) -> Any:
    """A bool tensor, one per group: True when some advantage in the group is non-zero (the rewards spread)."""
    grouped = advantages.reshape(-1, num_generations)
    return grouped.abs().amax(dim=1) > ZERO_ADVANTAGE


def extra_prompt_indices(
    num_rows: int, count: int, *, seed: int, step: int, draw: int, rank: int
) -> list[int]:
    """``count`` distinct dataset rows for extra draw ``draw`` (1, 2, ...) of optimizer step ``step`` on ``rank``:
    a function of these numbers alone, so a resumed run draws the same prompts."""
    rng = np.random.default_rng([seed, step, draw, rank])
    return [int(i) for i in rng.choice(num_rows, size=min(count, num_rows), replace=False)]


def fill_batch(
    draws: Sequence[dict[str, Any]],
    live: Sequence[Any],
    num_generations: int,
    num_groups: int,
    pad_token_id: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """One batch of ``num_groups`` groups from scored ``draws`` (each split by TRL's
    ``split_pixel_values_by_grid``, so images are per-row lists), with ``live`` the :func:`live_groups` of each.

    Live groups are taken in draw order (the dataloader's draw first). When fewer than ``num_groups`` are live,
    the batch is filled with the first draw's dead groups, *masked*: their completion mask and advantages are
    zeroed, so their tokens count in neither the loss nor its normalizer; a zero-spread group never reaches the
    loss. Returns the batch (``num_items_in_batch`` left for the caller to recompute across ranks) and
    ``{"live_groups": share of the batch that is live, "masked_groups": share masked}``.
    """
    import torch

    picks: list[tuple[int, int]] = [
        (d, int(gi)) for d, flags in enumerate(live) for gi in torch.nonzero(flags).flatten().tolist()
    ][:num_groups]
    n_live = len(picks)
    dead_first = [int(gi) for gi in torch.nonzero(~live[0]).flatten().tolist()]
    picks += [(0, gi) for gi in dead_first[: num_groups - n_live]]
    if len(picks) < num_groups:
        raise ValueError(f"fill_batch: {len(picks)} groups for a batch of {num_groups}")
    rows = [(d, gi * num_generations + k) for d, gi in picks for k in range(num_generations)]
    masked_rows = torch.zeros(len(rows), dtype=torch.bool)
    masked_rows[n_live * num_generations :] = True

    out: dict[str, Any] = {}
    for key, first in draws[0].items():
        if key == "num_items_in_batch":
            continue
        if key in _PER_ROW_LISTS and isinstance(first, list):
            out[key] = [draws[d][key][r] for d, r in rows]
        elif key in _LEFT_PADDED or key in _RIGHT_PADDED:
            left = key in _LEFT_PADDED
            fill = pad_token_id if key in ("prompt_ids", "completion_ids") else _RIGHT_PADDED.get(key, 0)
            width = max(draws[d][key].shape[1] for d, _ in rows)
            out[key] = torch.stack([_pad_row(draws[d][key][r], width, fill, left) for d, r in rows])
        elif key in _PROMPT_THEN_COMPLETION:
            p_width = max(draws[d]["prompt_ids"].shape[1] for d, _ in rows)
            c_width = max(draws[d]["completion_ids"].shape[1] for d, _ in rows)
            merged = []
            for d, r in rows:
                row, p = draws[d][key][r], draws[d]["prompt_ids"].shape[1]
                merged.append(
                    torch.cat([_pad_row(row[:p], p_width, 0, True), _pad_row(row[p:], c_width, 0, False)])
                )
            out[key] = torch.stack(merged)
        elif key == "advantages":
            out[key] = torch.stack([draws[d][key][r] for d, r in rows])
        else:
            raise ValueError(f"dynamic sampling cannot merge TRL's batch field {key!r}; turn it off")
    out["advantages"] = out["advantages"].masked_fill(masked_rows.to(out["advantages"].device), 0.0)
    out["completion_mask"] = out["completion_mask"] * (~masked_rows).to(out["completion_mask"]).unsqueeze(1)
    stats = {"live_groups": n_live / num_groups, "masked_groups": (num_groups - n_live) / num_groups}
    return out, stats


def _pad_row(row: Any, width: int, fill: float, left: bool) -> Any:
    import torch

    missing = width - row.shape[0]
    if missing <= 0:
        return row
    pad = torch.full((missing, *row.shape[1:]), fill, dtype=row.dtype, device=row.device)
    return torch.cat([pad, row] if left else [row, pad])
