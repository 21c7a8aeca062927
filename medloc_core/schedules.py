"""The baseline IoU schedules MedLoc-R1 is compared with (a fixed τ, the raw IoU reward, V-Triune's
progress-based thresholds), ``make_schedule`` (a schedule by name) and ``PerDatasetSchedule`` (one schedule per
dataset). All implement :class:`medloc_core.curriculum.Schedule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medloc_core.curriculum import (
    SCHEDULE_NAMES,
    VTRIUNE_MEDICAL_THRESHOLDS,
    CurriculumConfig,
    CurriculumScheduler,
    _check_state,
    _entries_from,
    _OneThreshold,
    _step_stats,
)


class FixedSchedule(_OneThreshold):
    """Constant threshold (VLM-R1's binary reward; methods.md §2). ``stats``: threshold, hit_rate, iou_mean of
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

    @property
    def stats(self) -> dict[str, Any]:
        """Statistics of the last step."""
        return dict(self._stats)

    def observe(self, ious: Any, step: int | None = None) -> bool:
        """Record the step's hit rate; never changes the threshold (returns False)."""
        flat = _entries_from(ious, "step", "FixedSchedule.observe")[0]
        self._stats = {
            "threshold": self.tau,
            **_step_stats(flat, self.tau, self.ge),
            "raised": False,
            "num_raises": 0,
        }
        return False

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state."""
        return {"kind": "fixed", "tau": self.tau, "ge": self.ge, "stats": dict(self._stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        _check_state(state, "fixed")
        self.tau, self.ge, self._stats = float(state["tau"]), bool(state["ge"]), dict(state["stats"])


class RawIoUSchedule(_OneThreshold):
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

    @property
    def stats(self) -> dict[str, Any]:
        """Statistics of the last step."""
        return dict(self._stats)

    def observe(self, ious: Any, step: int | None = None) -> bool:
        """Record the step's mean IoU; returns False."""
        flat = _entries_from(ious, "step", "RawIoUSchedule.observe")[0]
        self._stats = {"iou_mean": float(np.mean(flat)), "raised": False, "num_raises": 0}
        return False

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state."""
        return {"kind": "raw_iou", "stats": dict(self._stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        _check_state(state, "raw_iou")
        self._stats = dict(state["stats"])


class VTriuneSchedule(_OneThreshold):
    """Progress-based threshold (V-Triune's dynamic IoU, methods.md §3): ``eps`` depends on step / total_steps.

    ``thresholds`` is a tuple of ``(max_progress, eps)``: eps applies while ``step / total_steps <= max_progress``;
    past the last bound the last eps applies. ``step`` counts completed optimizer steps; :meth:`observe`
    advances it by one, or sets it to the given ``step`` (pass TRL's ``state.global_step`` at ``on_log``, which
    already counts the step just finished). Defaults: :data:`VTRIUNE_MEDICAL_THRESHOLDS` (A9). The reward is
    ``IoU * 1[IoU >= eps]`` (``medloc_core.rewards.make_vtriune_reward``).
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

    @property
    def stats(self) -> dict[str, Any]:
        """Statistics of the last step."""
        return dict(self._stats)

    def observe(self, ious: Any, step: int | None = None) -> bool:
        """Record the step's hit rate and advance the step; True when eps changed."""
        flat = _entries_from(ious, "step", "VTriuneSchedule.observe")[0]
        before = self.threshold
        stats = {"threshold": before, **_step_stats(flat, before, self.ge)}
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
        _check_state(state, "vtriune")
        saved = (int(state["total_steps"]), tuple((float(p), float(e)) for p, e in state["thresholds"]))
        if saved != (self.total_steps, self.thresholds):
            raise ValueError(f"VTriuneSchedule.load_state_dict: saved schedule {saved} differs from this one")
        self.ge = bool(state["ge"])
        self.step = int(state["step"])
        self._num_changes = int(state["num_changes"])
        self._stats = dict(state["stats"])


def make_schedule(
    name: str,
    config: CurriculumConfig | None = None,
    total_steps: int | None = None,
    **kw: Any,
) -> CurriculumScheduler | FixedSchedule | RawIoUSchedule | VTriuneSchedule:
    """Build a schedule by name: ``medloc`` (default method), ``fixed``, ``raw_iou`` or ``vtriune``.

    ``medloc``: ``config`` (default :class:`CurriculumConfig`), with ``kw`` overriding its fields.
    ``fixed``: ``kw`` = ``tau`` (default 0.5), ``ge``. ``vtriune``: needs ``total_steps``; ``kw`` =
    ``thresholds``, ``ge``. ``raw_iou``: no arguments.
    """
    if name == "medloc":
        cfg = config if config is not None else CurriculumConfig()
        return CurriculumScheduler(dataclasses.replace(cfg, **kw) if kw else cfg)
    if config is not None:
        raise ValueError(f"make_schedule: config applies only to 'medloc', not {name!r}")
    if name == "fixed":
        return FixedSchedule(**kw)
    if name == "raw_iou":
        if kw:
            raise ValueError(f"make_schedule: 'raw_iou' takes no options, got {sorted(kw)}")
        return RawIoUSchedule()
    if name == "vtriune":
        if total_steps is None:
            raise ValueError("make_schedule: 'vtriune' needs total_steps (its thresholds depend on progress)")
        return VTriuneSchedule(total_steps, **kw)
    raise ValueError(f"make_schedule: unknown schedule {name!r}; choose one of {SCHEDULE_NAMES}")


@dataclass
class PerDatasetSchedule:
    """One independent schedule per dataset, for joint training on several datasets.

    ``factory()`` builds a fresh schedule; it is called once per name in ``datasets``. A dataset with no
    IoUs in a step is not observed in that step (its window does not move).
    """

    factory: Callable[[], Any]
    datasets: Sequence[str]
    schedules: dict[str, Any] = field(init=False)
    per_dataset = True

    def __post_init__(self) -> None:
        names = list(self.datasets)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"PerDatasetSchedule: datasets must be non-empty and unique, got {names}")
        self.datasets = tuple(names)
        self.schedules = {name: self.factory() for name in names}
        self.ge = next(iter(self.schedules.values())).ge

    @property
    def name(self) -> str:
        """``per_dataset:<inner schedule name>``."""
        return f"per_dataset:{next(iter(self.schedules.values())).name}"

    def _get(self, dataset: str) -> Any:
        try:
            return self.schedules[dataset]
        except KeyError:
            raise KeyError(
                f"PerDatasetSchedule: unknown dataset {dataset!r}; known: {list(self.datasets)}"
            ) from None

    def threshold_for(self, dataset: str) -> float | None:
        """The threshold of one dataset's schedule."""
        return self._get(dataset).threshold

    @property
    def thresholds(self) -> dict[str, float | None]:
        """dataset -> threshold."""
        return {name: s.threshold for name, s in self.schedules.items()}

    @property
    def threshold(self) -> float | None:
        """The mean of the datasets' thresholds (None when none has one): the run-level summary."""
        values = [v for v in self.thresholds.values() if v is not None]
        return float(sum(values) / len(values)) if values else None

    @property
    def num_raises(self) -> int:
        """Raises summed over the datasets."""
        return sum(int(s.stats.get("num_raises", 0)) for s in self.schedules.values())

    def observe_by_dataset(
        self, ious_by_dataset: Mapping[str, Any], step: int | None = None
    ) -> dict[str, bool]:
        """Feed each named dataset's IoUs of this step; returns dataset -> raised."""
        return {
            name: bool(self._get(name).observe(ious, step=step)) for name, ious in ious_by_dataset.items()
        }

    def observe(
        self, ious: Sequence[float], step: int | None = None, *, datasets: Sequence[str] | None = None
    ) -> bool:
        """Feed a flat list of IoUs with the dataset of each; True when any dataset's threshold changed."""
        if datasets is None:
            raise ValueError("PerDatasetSchedule.observe needs the dataset of each IoU (datasets=...)")
        values, names = list(ious), list(datasets)
        if len(values) != len(names):
            raise ValueError(f"PerDatasetSchedule.observe: {len(values)} IoUs but {len(names)} dataset names")
        grouped: dict[str, list[float]] = {}
        for value, name in zip(values, names):
            grouped.setdefault(name, []).append(value)
        return any(self.observe_by_dataset(grouped, step=step).values())

    @property
    def stats(self) -> dict[str, Any]:
        """Every dataset's stats, flattened as ``"<dataset>/<key>"``."""
        return {
            f"{name}/{key}": value for name, s in self.schedules.items() for key, value in s.stats.items()
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state of every dataset's schedule."""
        return {
            "kind": "per_dataset",
            "schedules": {name: s.state_dict() for name, s in self.schedules.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the dataset names must match)."""
        _check_state(state, "per_dataset")
        saved = state["schedules"]
        if set(saved) != set(self.schedules):
            raise ValueError(
                f"PerDatasetSchedule.load_state_dict: saved datasets {sorted(saved)} != {sorted(self.schedules)}"
            )
        for name, sub in saved.items():
            self.schedules[name].load_state_dict(sub)
