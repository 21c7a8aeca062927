"""IoU-threshold schedules for the GRPO accuracy reward: the MedLoc-R1 curriculum and its baselines.

Read in this order: ``config`` (:class:`CurriculumConfig`, every default and ambiguity of the rule),
``scheduler`` (:class:`CurriculumScheduler`, the rule itself), ``baselines`` (fixed τ, raw IoU, V-Triune),
``spread`` (:class:`SpreadSchedule`, ``medloc_spread``: our rule that keeps groups alive, docs/curriculum.md),
``base`` (the protocol they share). This module picks one by name (:func:`make_schedule`), builds the one a
training config asks for (:func:`schedule_for`) and runs one schedule per dataset (:class:`PerDatasetSchedule`).
The rule and its defaults are specified in ``docs/method.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medloc_core.curriculum.base import check_state
from medloc_core.curriculum.baselines import FixedSchedule, RawIoUSchedule, VTriuneSchedule
from medloc_core.curriculum.config import CurriculumConfig
from medloc_core.curriculum.scheduler import CurriculumScheduler
from medloc_core.curriculum.spread import SpreadConfig, SpreadSchedule

SCHEDULE_NAMES = ("medloc", "fixed", "raw_iou", "vtriune", "medloc_spread")


def make_schedule(
    name: str,
    config: CurriculumConfig | SpreadConfig | None = None,
    total_steps: int | None = None,
    **kw: Any,
) -> CurriculumScheduler | FixedSchedule | RawIoUSchedule | VTriuneSchedule | SpreadSchedule:
    """Build a schedule by name: ``medloc`` (default method), ``fixed``, ``raw_iou``, ``vtriune`` or
    ``medloc_spread``.

    ``medloc``: ``config`` (default :class:`CurriculumConfig`), with ``kw`` overriding its fields.
    ``medloc_spread``: ``config`` (default :class:`SpreadConfig`), with ``kw`` overriding its fields.
    ``fixed``: ``kw`` = ``tau`` (default 0.5), ``ge``. ``vtriune``: needs ``total_steps``; ``kw`` =
    ``thresholds``, ``ge``. ``raw_iou``: no arguments.
    """
    if name == "medloc":
        cfg = config if config is not None else CurriculumConfig()
        return CurriculumScheduler(CurriculumConfig(**{**cfg.model_dump(), **kw}) if kw else cfg)
    if name == "medloc_spread":
        spread = config if config is not None else SpreadConfig()
        return SpreadSchedule(SpreadConfig(**{**spread.model_dump(), **kw}) if kw else spread)
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
        check_state(state, "per_dataset")
        saved = state["schedules"]
        if set(saved) != set(self.schedules):
            raise ValueError(
                f"PerDatasetSchedule.load_state_dict: saved datasets {sorted(saved)} != {sorted(self.schedules)}"
            )
        for name, sub in saved.items():
            self.schedules[name].load_state_dict(sub)


def schedule_for(
    name: str,
    *,
    curriculum: CurriculumConfig | None = None,
    spread: SpreadConfig | None = None,
    fixed_tau: float = 0.5,
    total_steps: int | None = None,
    per_dataset: Sequence[str] | None = None,
) -> Any:
    """The schedule a training run asks for: ``medloc`` with ``curriculum`` (None: the defaults), ``medloc_spread``
    with ``spread`` (None: the defaults), ``fixed`` at
    ``fixed_tau``, ``raw_iou``, or ``vtriune`` over ``total_steps``; one per dataset when ``per_dataset`` names
    the datasets (thresholded schedules only)."""

    def one() -> Any:
        if name == "medloc":
            return make_schedule("medloc", curriculum)
        if name == "medloc_spread":
            return make_schedule("medloc_spread", spread)
        if name == "fixed":
            return make_schedule("fixed", tau=fixed_tau)
        return make_schedule(name, total_steps=total_steps)

    if per_dataset is None:
        return one()
    if name == "raw_iou":
        raise ValueError("per_dataset_thresholds needs a thresholded schedule, not 'raw_iou'")
    return PerDatasetSchedule(one, sorted(set(per_dataset)))
