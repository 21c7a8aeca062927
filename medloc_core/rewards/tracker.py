"""What the reward functions saw in one optimizer step (IoUs, datasets, parse failures), kept for the curriculum:
:class:`RewardTracker` is filled by the rewards while TRL scores a batch and emptied by the curriculum callback
after each step, which feeds the IoUs to the schedule. IoUs are unitless, in [0, 1].
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StepRecord:
    """What the reward functions saw since the last :meth:`RewardTracker.pop_step`.

    ``ious``, ``datasets``, ``parse_failures`` and ``completions`` come from the tracker's primary reward (the
    first IoU reward that recorded, unless ``RewardTracker(primary=...)`` names one), so that two IoU rewards
    sharing a tracker do not count a completion twice. ``per_reward`` has the counts of every reward name:
    ``{"calls": int, "completions": int, "parse_failures": int}``.
    """

    ious: list[float] = field(default_factory=list)
    datasets: list[str | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    parse_failures: int = 0
    completions: int = 0
    per_reward: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def parse_failure_rate(self) -> float:
        """parse_failures / completions (0.0 when nothing was recorded)."""
        return self.parse_failures / self.completions if self.completions else 0.0

    @property
    def iou_mean(self) -> float:
        """Mean IoU (0.0 when nothing was recorded)."""
        return float(np.mean(self.ious)) if self.ious else 0.0

    def ious_by_dataset(self) -> dict[str | None, list[float]]:
        """dataset -> its IoUs, in call order."""
        out: dict[str | None, list[float]] = {}
        for value, name in zip(self.ious, self.datasets):
            out.setdefault(name, []).append(value)
        return out


class RewardTracker:
    """Collects IoUs, dataset names and parse failures from the reward calls of one training step.

    Reward functions call :meth:`record`; the training loop calls :meth:`pop_step` once per optimizer step
    (e.g. in a TrainerCallback) and feeds ``record.ious`` to the schedule. TRL may call a reward function
    several times per optimizer step (gradient accumulation); the calls accumulate until the pop.
    """

    def __init__(self, primary: str | None = None) -> None:
        self.primary = primary
        self._current = StepRecord()
        self.total_completions = 0
        self.total_parse_failures = 0
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Reward calls inside this block record nothing (dynamic sampling's extra draws: the curriculum window
        sees the dataloader's draw only)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def record(
        self,
        name: str,
        ious: Sequence[float],
        datasets: Sequence[str | None] | None,
        parse_failures: int,
        texts: Sequence[str] | None = None,
    ) -> None:
        """Add one reward call's results under reward ``name`` (``texts``: the completions, for the samples
        table)."""
        if self._paused:
            return
        n = len(ious)
        if datasets is not None and len(datasets) != n:
            raise ValueError(f"RewardTracker.record({name!r}): {n} IoUs but {len(datasets)} dataset names")
        counts = self._current.per_reward.setdefault(
            name, {"calls": 0, "completions": 0, "parse_failures": 0}
        )
        counts["calls"] += 1
        counts["completions"] += n
        counts["parse_failures"] += parse_failures
        if self.primary is None:
            self.primary = name
        if name != self.primary:
            return
        self._current.ious.extend(float(v) for v in ious)
        self._current.datasets.extend(datasets if datasets is not None else [None] * n)
        self._current.texts.extend(texts if texts is not None else [""] * n)
        self._current.parse_failures += parse_failures
        self._current.completions += n
        self.total_completions += n
        self.total_parse_failures += parse_failures

    def peek(self) -> StepRecord:
        """The current (unpopped) record, without resetting it."""
        return self._current

    def pop_step(self) -> StepRecord:
        """Everything recorded since the last pop; starts a new record."""
        out, self._current = self._current, StepRecord()
        return out
