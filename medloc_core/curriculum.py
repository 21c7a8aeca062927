"""IoU-threshold schedules for the GRPO accuracy reward: the MedLoc-R1 curriculum and its baselines.

The reward of a completion is ``1[IoU >= tau]`` (see ``medloc_core.rewards``); a schedule owns ``tau``.
:class:`CurriculumScheduler` implements MedLoc-R1 (``../shared/research/methods.md`` §1(b)-(d)): a sliding window
of the last N steps of IoUs, three readiness conditions (hit rate, stability, IoU margin) with
threshold-dependent bounds P(tau) and S(tau), a decaying step size, half-window refresh after a raise and a
freeze at tau_target. Baselines with the same interface: :class:`FixedSchedule` (VLM-R1, tau constant),
:class:`RawIoUSchedule` (continuous IoU, no threshold) and :class:`VTriuneSchedule` (progress-based).

Every schedule has ``name``, ``threshold`` (float, or None for raw IoU), ``ge`` (whether a hit is ``IoU >= tau``
or ``IoU > tau``), ``observe(ious, step=None) -> bool`` (True when the threshold changed), ``stats`` (dict of the
last observation), ``state_dict()`` and ``load_state_dict()`` (JSON-serializable, exact round trip).

IoUs are unitless values in [0, 1]. Only numpy is imported.

Ambiguities of methods.md §1(i) that concern the caller rather than the config (the rest are listed in
:class:`CurriculumConfig`):
    A2  the reward reads ``threshold`` when it scores a batch; a raise in ``observe`` applies to the next batch.
    A9  the V-Triune baseline's thresholds are rescaled for medical data (:data:`VTRIUNE_MEDICAL_THRESHOLDS`).
    A13 feed ``observe`` the IoUs gathered from all ranks in a fixed order: the scheduler is deterministic, so
        every rank that feeds the same IoUs holds the same tau.
    A14 ``state_dict()`` holds tau, the window and the raise count; save it with each checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

STEP_SCHEDULES = ("piecewise", "linear", "cosine")
WINDOW_UNITS = ("step", "group")
STD_KINDS = ("per_entry_hit_rate", "pooled")
STD_ESTIMATORS = ("population", "sample")
SCHEDULE_NAMES = ("medloc", "fixed", "raw_iou", "vtriune")

# Comparisons of window statistics against P, S and Delta allow this slack, so that e.g. a hit rate of
# 24/30 computed as a float mean still counts as >= 0.8.
_TOL = 1e-9
# tau is rounded after every raise so that 0.3 + 0.15 is 0.45 exactly and band look-ups stay stable.
_TAU_DECIMALS = 10


def _lookup(table: Sequence[tuple[float, float]], tau: float) -> float:
    """Value of the first ``(upper_bound, value)`` entry with ``tau < upper_bound``; past the end, the last value."""
    for upper, value in table:
        if tau < upper - _TOL:
            return value
    return table[-1][1]


@dataclass(frozen=True)
class CurriculumConfig:
    """MedLoc-R1 curriculum settings. Defaults follow methods.md §1(d); each unstated detail is an option.

    Core parameters (§1(d)):
        tau0=0.3, tau_target=0.8 (the threshold starts and ends here), window=30 (N), margin=0.10 (Delta),
        step_schedule="piecewise" ("linear" and "cosine" are the paper's alternatives).

    Ambiguities of methods.md §1(i) and the chosen defaults:
        A1 window_unit="step": one window entry per observe() call (= per optimizer step, all ranks'
            IoUs). "group" makes one entry per prompt group, as the unofficial port does.
        A3 std_kind="per_entry_hit_rate", std_estimator="population": sigma is the population std of the
            per-entry hit rates (the pooled std of binary rewards is fixed by the hit rate and would conflict
            with P and S). "pooled" (std of all binary rewards) and "sample" (ddof=1) are options.
        A4 recompute_hits=True: raw IoUs are stored and hits are recomputed at the current tau every step.
            False keeps the hits computed under the tau that was active when the entry arrived (the port).
        A5 require_full_window=True: the rule is checked only when the window holds N entries, initially
            and after each refresh. False checks as soon as the window holds 2 entries.
        A6 unknown constants, taken from the port: piecewise_steps=(0.15, 0.10, 0.05) with
            piecewise_boundaries=(0.55, 0.75) (tau < 0.55 -> 0.15, < 0.75 -> 0.10, else 0.05); linear and
            cosine decay over tau with delta0=0.2, as the port writes them, plus a floor min_step=0.05 so they
            reach tau_target (without it the gap only shrinks geometrically); p_table and s_table below.
        A8 ge=True: a hit is IoU >= tau (the digest); False uses VLM-R1's strict IoU > tau.
        A12 the threshold freezes at tau_target: no further checks or raises.
        E10 refresh_fraction=0.5: after a raise the oldest half of the window is dropped (the paper's
            "semi-preserved" refresh); 0, 0.25 and 1.0 are its ablations.
    Ablation switches (methods.md §1(h)): use_reward_check, use_stability_check, use_margin_check. A
    disabled condition counts as satisfied; its flag in ``stats`` still reports the comparison.

    Tables are tuples of ``(upper_bound, value)`` read as "value while tau < upper_bound"; a tau past the last
    bound uses the last value. p_table = min window hit rate P(tau), s_table = max window std S(tau).
    """

    tau0: float = 0.3
    tau_target: float = 0.8
    window: int = 30
    margin: float = 0.10
    step_schedule: str = "piecewise"
    piecewise_steps: tuple[float, float, float] = (0.15, 0.10, 0.05)
    piecewise_boundaries: tuple[float, float] = (0.55, 0.75)
    delta0: float = 0.2
    min_step: float = 0.05
    p_table: tuple[tuple[float, float], ...] = ((0.60, 0.80), (0.75, 0.75), (1.0, 0.55))
    s_table: tuple[tuple[float, float], ...] = ((0.60, 0.20), (0.75, 0.35), (1.0, 0.40))
    window_unit: str = "step"
    std_kind: str = "per_entry_hit_rate"
    std_estimator: str = "population"
    recompute_hits: bool = True
    require_full_window: bool = True
    refresh_fraction: float = 0.5
    ge: bool = True
    use_reward_check: bool = True
    use_stability_check: bool = True
    use_margin_check: bool = True

    def __post_init__(self) -> None:
        # Accept lists (e.g. from YAML/JSON) and store tuples so the config stays hashable and comparable.
        for name in ("piecewise_steps", "piecewise_boundaries"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("p_table", "s_table"):
            rows = tuple((float(u), float(v)) for u, v in getattr(self, name))
            object.__setattr__(self, name, rows)
        self._validate()

    def _validate(self) -> None:
        def bad(field_name: str, why: str) -> ValueError:
            return ValueError(f"CurriculumConfig.{field_name}={getattr(self, field_name)!r}: {why}")

        if not 0.0 <= self.tau0 <= 1.0:
            raise bad("tau0", "must be in [0, 1]")
        if not self.tau0 <= self.tau_target <= 1.0:
            raise bad("tau_target", "must be in [tau0, 1]")
        if not (isinstance(self.window, int) and self.window >= 2):
            raise bad("window", "must be an integer >= 2")
        if self.step_schedule not in STEP_SCHEDULES:
            raise bad("step_schedule", f"must be one of {STEP_SCHEDULES}")
        if len(self.piecewise_steps) != 3 or any(s <= 0 for s in self.piecewise_steps):
            raise bad("piecewise_steps", "must be 3 positive step sizes")
        b = self.piecewise_boundaries
        if len(b) != 2 or not b[0] <= b[1]:
            raise bad("piecewise_boundaries", "must be 2 increasing thresholds")
        if self.delta0 <= 0:
            raise bad("delta0", "must be > 0")
        if self.min_step < 0:
            raise bad("min_step", "must be >= 0")
        if self.step_schedule != "piecewise" and self.min_step <= 0 and self.tau_target > self.tau0:
            raise bad("min_step", "linear/cosine decay needs min_step > 0 to reach tau_target")
        for name in ("p_table", "s_table"):
            table = getattr(self, name)
            if not table or any(table[i][0] > table[i + 1][0] for i in range(len(table) - 1)):
                raise bad(name, "must be a non-empty tuple of (upper_bound, value) with increasing bounds")
        if self.window_unit not in WINDOW_UNITS:
            raise bad("window_unit", f"must be one of {WINDOW_UNITS}")
        if self.std_kind not in STD_KINDS:
            raise bad("std_kind", f"must be one of {STD_KINDS}")
        if self.std_estimator not in STD_ESTIMATORS:
            raise bad("std_estimator", f"must be one of {STD_ESTIMATORS}")
        if not 0.0 <= self.refresh_fraction <= 1.0:
            raise bad("refresh_fraction", "must be in [0, 1]")

    def step_size(self, tau: float) -> float:
        """delta(tau): how far tau moves on a raise (before capping at tau_target)."""
        if self.step_schedule == "piecewise":
            b1, b2 = self.piecewise_boundaries
            s1, s2, s3 = self.piecewise_steps
            if tau < b1 - _TOL:
                return s1
            return s2 if tau < b2 - _TOL else s3
        span = self.tau_target - self.tau0
        progress = min(1.0, max(0.0, (tau - self.tau0) / span)) if span > 0 else 1.0
        if self.step_schedule == "linear":
            delta = self.delta0 * (1.0 - progress)
        else:
            delta = 0.5 * self.delta0 * (1.0 + math.cos(math.pi * progress))
        return max(self.min_step, delta)

    def min_hit_rate(self, tau: float) -> float:
        """P(tau): the window hit rate needed for a raise."""
        return _lookup(self.p_table, tau)

    def max_std(self, tau: float) -> float:
        """S(tau): the largest window std of hit rates that still counts as stable."""
        return _lookup(self.s_table, tau)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurriculumConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CurriculumConfig: unknown field(s) {unknown}")
        return cls(**dict(data))


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


class _OneThreshold:
    """The part of the :class:`Schedule` protocol that is the same for every single-threshold schedule."""

    per_dataset = False

    def threshold_for(self, dataset: str | None = None) -> float | None:
        """The one threshold, whatever the dataset."""
        return self.threshold  # type: ignore[attr-defined]

    @property
    def num_raises(self) -> int:
        return int(self.stats.get("num_raises", 0))  # type: ignore[attr-defined]


def _is_list(x: Any) -> bool:
    return isinstance(x, list | tuple | np.ndarray) or (
        isinstance(x, Sequence) and not isinstance(x, str | bytes)
    )


def _iou_array(values: Any, where: str) -> np.ndarray:
    """A flat sequence of IoUs -> float64 array, checked to be numbers in [0, 1] (errors name the index)."""
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged: some element is itself a list
        arr = np.asarray([None])
    if arr.ndim != 1 or arr.dtype.kind not in "fiub":
        for i, v in enumerate(values):
            if _is_list(v):
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


def _entries_from(ious: Any, window_unit: str, where: str) -> list[np.ndarray]:
    """One step's IoUs -> window entries: one entry per step, or one per group (``window_unit``)."""
    items = ious if isinstance(ious, np.ndarray) else list(ious)
    if len(items) == 0:
        raise ValueError(f"{where}: got no IoUs for this step")
    if (isinstance(items, np.ndarray) and items.ndim == 1) or not _is_list(items[0]):
        groups = [_iou_array(items, where)]
    else:
        if not all(_is_list(g) for g in items):
            raise ValueError(
                f"{where}: mix of numbers and lists; pass a flat list or a list of per-group lists"
            )
        groups = [_iou_array(g, f"{where} group {gi}") for gi, g in enumerate(items)]
        for gi, g in enumerate(groups):
            if g.size == 0:
                raise ValueError(f"{where}: group {gi} has no IoUs")
    if window_unit == "step" and len(groups) > 1:
        return [np.concatenate(groups)]
    return groups


def _hits(values: np.ndarray, tau: float, ge: bool) -> np.ndarray:
    return values >= tau if ge else values > tau


def _step_stats(ious: Sequence[float], tau: float, ge: bool) -> dict[str, float]:
    arr = np.asarray(ious, dtype=np.float64)
    return {"hit_rate": float(_hits(arr, tau, ge).mean()), "iou_mean": float(arr.mean())}


def _check_state(state: Mapping[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"state_dict is for a {state.get('kind')!r} schedule, cannot load into {kind!r}")


class CurriculumScheduler(_OneThreshold):
    """MedLoc-R1's performance-aware IoU threshold (methods.md §1(c), lines 11-18).

    Call :meth:`observe` once per training step with that step's IoUs (all completions, all ranks, 0 for
    unparseable answers). The threshold it returns via :attr:`threshold` scores the *next* batch (A2).

    ``stats`` after each observe (keys exactly as below; all computed on the window that includes this step):
        threshold       tau at which the statistics were evaluated (the tau that scored this step)
        hit_rate        r = mean over entries of the entry's hit rate
        reward_std      sigma (see A3 in :class:`CurriculumConfig`)
        iou_margin      m = mean over entries of the entry's mean IoU, minus tau
        window_fill     entries / N, in [0, 1]
        cond_reward     r >= P(tau);  cond_stability  sigma <= S(tau);  cond_margin  m >= Delta
        raised          whether tau was raised by this observation
        num_raises      raises so far
    """

    name = "medloc"

    def __init__(self, config: CurriculumConfig | None = None) -> None:
        self.config = config if config is not None else CurriculumConfig()
        self.ge = self.config.ge
        self._tau = float(self.config.tau0)
        self._window: list[np.ndarray] = []
        self._stored_hits: list[np.ndarray] = []  # used only when recompute_hits is False
        self._num_raises = 0
        self._steps = 0
        self._last_step: int | None = None
        self._stats = self._empty_stats()

    # ------------------------------------------------------------------------------------------ public

    @property
    def threshold(self) -> float:
        """Current IoU threshold tau, in [tau0, tau_target]."""
        return self._tau

    @property
    def frozen(self) -> bool:
        """True once tau has reached tau_target (A12)."""
        return self._tau >= self.config.tau_target - _TOL

    @property
    def stats(self) -> dict[str, Any]:
        """Statistics of the last :meth:`observe` (a copy)."""
        return dict(self._stats)

    @property
    def window_size(self) -> int:
        """Number of entries currently in the window."""
        return len(self._window)

    def window_contents(self) -> list[list[float]]:
        """The IoUs of every window entry, oldest first (a copy)."""
        return [w.tolist() for w in self._window]

    def observe(self, ious: Any, step: int | None = None) -> bool:
        """Feed one training step's IoUs; returns True when tau was raised.

        ``ious``: a flat sequence of IoUs, or a sequence of per-group sequences. With ``window_unit="step"``
        the whole step is one window entry; with ``"group"`` each group is one entry (a flat list is one
        group). The rule is checked once per call, after all entries are pushed. ``step`` is recorded only.
        """
        cfg = self.config
        tau = self._tau
        for arr in _entries_from(ious, cfg.window_unit, "CurriculumScheduler.observe"):
            self._window.append(arr)
            self._stored_hits.append(
                _hits(arr, tau, self.ge) if not cfg.recompute_hits else np.empty(0, bool)
            )
        overflow = len(self._window) - cfg.window
        if overflow > 0:
            del self._window[:overflow]
            del self._stored_hits[:overflow]
        self._steps += 1
        self._last_step = step

        stats = self._window_stats(tau)
        ready = len(self._window) >= (cfg.window if cfg.require_full_window else 2)
        decide = (
            (stats["cond_reward"] or not cfg.use_reward_check)
            and (stats["cond_stability"] or not cfg.use_stability_check)
            and (stats["cond_margin"] or not cfg.use_margin_check)
        )
        raised = bool(ready and not self.frozen and decide)
        if raised:
            self._tau = min(round(tau + cfg.step_size(tau), _TAU_DECIMALS), cfg.tau_target)
            self._num_raises += 1
            drop = int(math.floor(len(self._window) * cfg.refresh_fraction + 1e-9))
            del self._window[:drop]
            del self._stored_hits[:drop]
        stats["raised"] = raised
        stats["num_raises"] = self._num_raises
        self._stats = stats
        return raised

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (A14); JSON-serializable."""
        return {
            "kind": "medloc",
            "config": self.config.to_dict(),
            "tau": self._tau,
            "window": [w.tolist() for w in self._window],
            "stored_hits": [h.astype(int).tolist() for h in self._stored_hits],
            "num_raises": self._num_raises,
            "steps": self._steps,
            "last_step": self._last_step,
            "stats": dict(self._stats),
        }

    def load_state_dict(self, state: Mapping[str, Any], *, strict_config: bool = True) -> None:
        """Restore :meth:`state_dict` output. With ``strict_config`` a different config is an error."""
        _check_state(state, "medloc")
        saved = CurriculumConfig.from_dict(state["config"])
        if strict_config and saved != self.config:
            diff = [
                f.name
                for f in dataclasses.fields(saved)
                if getattr(saved, f.name) != getattr(self.config, f.name)
            ]
            raise ValueError(f"CurriculumScheduler.load_state_dict: saved config differs in {diff}")
        if len(state["window"]) != len(state["stored_hits"]):
            raise ValueError("CurriculumScheduler.load_state_dict: window and stored_hits lengths differ")
        self._tau = float(state["tau"])
        self._window = [_iou_array(w, "state window") for w in state["window"]]
        self._stored_hits = [np.asarray(h, dtype=bool) for h in state["stored_hits"]]
        self._num_raises = int(state["num_raises"])
        self._steps = int(state["steps"])
        self._last_step = state["last_step"]
        self._stats = dict(state["stats"])

    # ----------------------------------------------------------------------------------------- internal

    def _empty_stats(self) -> dict[str, Any]:
        return {
            "threshold": self._tau,
            "hit_rate": 0.0,
            "reward_std": 0.0,
            "iou_margin": 0.0,
            "window_fill": 0.0,
            "cond_reward": False,
            "cond_stability": False,
            "cond_margin": False,
            "raised": False,
            "num_raises": 0,
        }

    def _window_stats(self, tau: float) -> dict[str, Any]:
        cfg = self.config
        # One pass over the concatenated window (entries may differ in length) instead of a loop per entry.
        values = np.concatenate(self._window)
        sizes = np.fromiter((w.size for w in self._window), dtype=np.int64, count=len(self._window))
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        hits = _hits(values, tau, self.ge) if cfg.recompute_hits else np.concatenate(self._stored_hits)
        hit_f = hits.astype(np.float64)
        entry_rates = np.add.reduceat(hit_f, starts) / sizes
        entry_means = np.add.reduceat(values, starts) / sizes
        ddof = 1 if cfg.std_estimator == "sample" else 0
        spread = entry_rates if cfg.std_kind == "per_entry_hit_rate" else hit_f
        std = float(spread.std(ddof=ddof)) if spread.size > ddof else 0.0
        hit_rate = float(entry_rates.mean())
        margin = float(entry_means.mean()) - tau
        return {
            "threshold": tau,
            "hit_rate": hit_rate,
            "reward_std": std,
            "iou_margin": margin,
            "window_fill": len(self._window) / cfg.window,
            "cond_reward": bool(hit_rate >= cfg.min_hit_rate(tau) - _TOL),
            "cond_stability": bool(std <= cfg.max_std(tau) + _TOL),
            "cond_margin": bool(margin >= cfg.margin - _TOL),
        }


# A9: V-Triune's own ladder (0.85 / 0.95 / 0.99) targets natural images and would give near-zero rewards on
# these medical sets. We keep its shape (three stages, switches at 10 % and 25 % of training) and rescale the
# values: start at VLM-R1's binary bar 0.5, end at 0.75, just under MedLoc-R1's tau_target 0.8, so the
# progress-based baseline is never stricter than the curriculum it is compared with; 0.65 sits between.
VTRIUNE_MEDICAL_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.10, 0.50), (0.25, 0.65), (1.0, 0.75))


# The baselines (fixed, raw IoU, V-Triune), make_schedule and the per-dataset wrapper live in
# medloc_core.schedules; they stay importable from here (lazily, so either module can be imported first).
_SCHEDULES_NAMES = frozenset(
    {"FixedSchedule", "RawIoUSchedule", "VTriuneSchedule", "make_schedule", "PerDatasetSchedule"}
)


def __getattr__(name: str) -> Any:
    if name in _SCHEDULES_NAMES:
        from medloc_core import schedules

        return getattr(schedules, name)
    raise AttributeError(name)
