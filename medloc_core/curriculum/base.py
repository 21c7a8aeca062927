"""What every IoU schedule shares: the :class:`Schedule` protocol the rewards and the training loop rely on, and
the helpers that turn one step's IoUs into window entries. IoUs are unitless values in [0, 1]; only numpy is
imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Schedule(Protocol):
    """What the rewards and the training loop rely on (every schedule here, per-dataset ones included).

    ``threshold`` is the threshold (the mean over datasets for a per-dataset schedule; None for raw IoU),
    ``threshold_for(dataset)`` the one that scores a sample of ``dataset``; ``per_dataset`` says whether
    ``observe`` needs the ``datasets`` of the IoUs; ``num_raises`` counts raises so far.
    """

    name: str
    ge: bool
    per_dataset: bool

    @property
    def threshold(self) -> float | None: ...

    def threshold_for(self, dataset: str | None) -> float | None: ...

    @property
    def num_raises(self) -> int: ...

    @property
    def stats(self) -> dict[str, Any]: ...

    def observe(self, ious: Any, step: int | None = None) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class OneThreshold:
    """The part of the :class:`Schedule` protocol that is the same for every single-threshold schedule."""

    per_dataset = False

    def threshold_for(self, dataset: str | None = None) -> float | None:
        """The one threshold, whatever the dataset."""
        return self.threshold  # type: ignore[attr-defined]

    @property
    def stats(self) -> dict[str, Any]:
        """Statistics of the last ``observe`` (a copy of the schedule's ``_stats``)."""
        return dict(self._stats)  # type: ignore[attr-defined]

    @property
    def num_raises(self) -> int:
        return int(self.stats.get("num_raises", 0))


def is_list(x: Any) -> bool:
    return isinstance(x, list | tuple | np.ndarray) or (
        isinstance(x, Sequence) and not isinstance(x, str | bytes)
    )


def iou_array(values: Any, where: str) -> np.ndarray:
    """A flat sequence of IoUs -> float64 array, checked to be numbers in [0, 1] (errors name the index)."""
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged: some element is itself a list
        arr = np.asarray([None])
    if arr.ndim != 1 or arr.dtype.kind not in "fiub":
        for i, v in enumerate(values):
            if is_list(v):
                raise ValueError(
                    f"{where}: mix of numbers and lists; pass a flat list or a list of per-group lists"
                )
            if isinstance(v, str | bytes) or not isinstance(v, int | float | np.number):
                raise ValueError(f"{where}: IoU #{i} is not a number: {v!r}")
        raise ValueError(f"{where}: IoUs must be a flat sequence of numbers")
    arr = arr.astype(np.float64, copy=False)
    bad = ~((arr >= 0.0) & (arr <= 1.0 + 1e-9))  # also catches NaN
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: IoU #{i} must be in [0, 1], got {arr[i]!r}")
    return np.minimum(arr, 1.0)


def entries_from(ious: Any, window_unit: str, where: str) -> list[np.ndarray]:
    """One step's IoUs -> window entries: one entry per step, or one per group (``window_unit``)."""
    items = ious if isinstance(ious, np.ndarray) else list(ious)
    if len(items) == 0:
        raise ValueError(f"{where}: got no IoUs for this step")
    if (isinstance(items, np.ndarray) and items.ndim == 1) or not is_list(items[0]):
        groups = [iou_array(items, where)]
    else:
        if not all(is_list(g) for g in items):
            raise ValueError(
                f"{where}: mix of numbers and lists; pass a flat list or a list of per-group lists"
            )
        groups = [iou_array(g, f"{where} group {gi}") for gi, g in enumerate(items)]
        for gi, g in enumerate(groups):
            if g.size == 0:
                raise ValueError(f"{where}: group {gi} has no IoUs")
    if window_unit == "step" and len(groups) > 1:
        return [np.concatenate(groups)]
    return groups


def hits_at(values: np.ndarray, tau: float, ge: bool) -> np.ndarray:
    return values >= tau if ge else values > tau


def step_stats(ious: Sequence[float], tau: float, ge: bool) -> dict[str, float]:
    arr = np.asarray(ious, dtype=np.float64)
    return {"hit_rate": float(hits_at(arr, tau, ge).mean()), "iou_mean": float(arr.mean())}


def check_state(state: Mapping[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"state_dict is for a {state.get('kind')!r} schedule, cannot load into {kind!r}")
