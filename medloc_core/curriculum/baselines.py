"""The baseline IoU schedules MedLoc-R1 is compared with: a fixed τ (VLM-R1), the raw IoU reward, and V-Triune's
progress-based thresholds. All implement :class:`medloc_core.curriculum.base.Schedule`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medloc_core.curriculum.base import OneThreshold, check_state, entries_from, step_stats

# A9: V-Triune's own ladder (0.85 / 0.95 / 0.99) targets natural images and would give near-zero rewards on
# these medical sets. We keep its shape (three stages, switches at 10 % and 25 % of training) and rescale the
# values: start at VLM-R1's binary bar 0.5, end at 0.75, just under MedLoc-R1's tau_target 0.8, so the
# progress-based baseline is never stricter than the curriculum it is compared with; 0.65 sits between.
VTRIUNE_MEDICAL_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.10, 0.50), (0.25, 0.65), (1.0, 0.75))


class FixedSchedule(OneThreshold):
    """Constant threshold (VLM-R1's binary reward; docs/method.md §5). ``stats``: threshold, hit_rate, iou_mean of
    the last step, raised (always False), num_raises (0)."""

    name = "fixed"

    def __init__(self, tau: float = 0.5, ge: bool = True) -> None:
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"FixedSchedule: tau must be in [0, 1], got {tau!r}")
        self.tau = float(tau)
        self.ge = ge
        self._stats: dict[str, Any] = {"threshold": self.tau, "hit_rate": 0.0, "iou_mean": 0.0}
        self._stats.update(raised=False, num_raises=0)

    @property
    def threshold(self) -> float:
        """The constant IoU threshold."""
        return self.tau

    def observe(self, ious: Any, step: int | None = None) -> bool:
        """Record the step's hit rate; never changes the threshold (returns False)."""
        flat = entries_from(ious, "step", "FixedSchedule.observe")[0]
        self._stats = {
            "threshold": self.tau,
            **step_stats(flat, self.tau, self.ge),
            "raised": False,
            "num_raises": 0,
        }
        return False

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state."""
        return {"kind": "fixed", "tau": self.tau, "ge": self.ge, "stats": dict(self._stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        check_state(state, "fixed")
        self.tau, self.ge, self._stats = float(state["tau"]), bool(state["ge"]), dict(state["stats"])


class RawIoUSchedule(OneThreshold):
    """No threshold: the accuracy reward is the continuous IoU (MedLoc-R1's Raw-IoU baseline).

    ``threshold`` is None. ``stats``: iou_mean of the last step, raised (False), num_raises (0).
    """

    name = "raw_iou"
    ge = True

    def __init__(self) -> None:
        self._stats: dict[str, Any] = {"iou_mean": 0.0, "raised": False, "num_raises": 0}

    @property
    def threshold(self) -> None:
        """Always None (no threshold)."""
        return None

    def observe(self, ious: Any, step: int | None = None) -> bool:
        """Record the step's mean IoU; returns False."""
        flat = entries_from(ious, "step", "RawIoUSchedule.observe")[0]
        self._stats = {"iou_mean": float(np.mean(flat)), "raised": False, "num_raises": 0}
        return False

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state."""
        return {"kind": "raw_iou", "stats": dict(self._stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        check_state(state, "raw_iou")
        self._stats = dict(state["stats"])


class VTriuneSchedule(OneThreshold):
    """Progress-based threshold (V-Triune's dynamic IoU, docs/method.md §5): ``eps`` depends on step / total_steps.

    ``thresholds`` is a tuple of ``(max_progress, eps)``: eps applies while ``step / total_steps <= max_progress``;
    past the last bound the last eps applies. ``step`` counts completed optimizer steps; :meth:`observe`
    advances it by one, or sets it to the given ``step`` (pass TRL's ``state.global_step`` at ``on_log``, which
    already counts the step just finished). Defaults: :data:`VTRIUNE_MEDICAL_THRESHOLDS` (A9). The reward is
    ``IoU * 1[IoU >= eps]`` (``medloc_core.rewards.grounding.make_vtriune_reward``).
    """

    name = "vtriune"

    def __init__(
        self,
        total_steps: int,
        thresholds: Sequence[tuple[float, float]] = VTRIUNE_MEDICAL_THRESHOLDS,
        ge: bool = True,
    ) -> None:
        if not (isinstance(total_steps, int) and total_steps > 0):
            raise ValueError(f"VTriuneSchedule: total_steps must be a positive int, got {total_steps!r}")
        table = tuple((float(p), float(e)) for p, e in thresholds)
        if not table or any(table[i][0] > table[i + 1][0] for i in range(len(table) - 1)):
            raise ValueError(
                f"VTriuneSchedule: thresholds must be (progress, eps) with increasing progress: {table}"
            )
        if any(not 0.0 <= e <= 1.0 for _, e in table):
            raise ValueError(f"VTriuneSchedule: every eps must be in [0, 1]: {table}")
        self.total_steps = total_steps
        self.thresholds = table
        self.ge = ge
        self.step = 0
        self._num_changes = 0
        self._stats: dict[str, Any] = {"threshold": self.threshold, "hit_rate": 0.0, "iou_mean": 0.0}
        self._stats.update(progress=0.0, raised=False, num_raises=0)

    @property
    def progress(self) -> float:
        """step / total_steps."""
        return self.step / self.total_steps

    @property
    def threshold(self) -> float:
        """eps for the current progress."""
        progress = self.progress
        for bound, eps in self.thresholds:
            if progress <= bound:
                return eps
        return self.thresholds[-1][1]

    def observe(self, ious: Any, step: int | None = None) -> bool:
        """Record the step's hit rate and advance the step; True when eps changed."""
        flat = entries_from(ious, "step", "VTriuneSchedule.observe")[0]
        before = self.threshold
        stats = {"threshold": before, **step_stats(flat, before, self.ge)}
        if step is not None and step < self.step:
            raise ValueError(f"VTriuneSchedule.observe: step went backwards ({self.step} -> {step})")
        self.step = self.step + 1 if step is None else int(step)
        changed = self.threshold != before
        self._num_changes += int(changed)
        stats.update(progress=self.progress, raised=changed, num_raises=self._num_changes)
        self._stats = stats
        return changed

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state."""
        return {
            "kind": "vtriune",
            "total_steps": self.total_steps,
            "thresholds": [list(t) for t in self.thresholds],
            "ge": self.ge,
            "step": self.step,
            "num_changes": self._num_changes,
            "stats": dict(self._stats),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (total_steps and thresholds must match)."""
        check_state(state, "vtriune")
        saved = (int(state["total_steps"]), tuple((float(p), float(e)) for p, e in state["thresholds"]))
        if saved != (self.total_steps, self.thresholds):
            raise ValueError(f"VTriuneSchedule.load_state_dict: saved schedule {saved} differs from this one")
        self.ge = bool(state["ge"])
        self.step = int(state["step"])
        self._num_changes = int(state["num_changes"])
        self._stats = dict(state["stats"])
