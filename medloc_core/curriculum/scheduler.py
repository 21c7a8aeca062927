"""MedLoc-R1's performance-aware IoU threshold, :class:`CurriculumScheduler` (``docs/method.md`` §0-§2).

The accuracy reward of a completion is ``1[IoU >= tau]`` (``rewards/grounding.py``); the scheduler owns ``tau``: a
sliding window of the last N steps of IoUs, three readiness conditions (hit rate, stability, IoU margin) with
threshold-dependent bounds P(tau) and S(tau), a decaying step size, half-window refresh after a raise and a
freeze at tau_target. Its settings are :class:`~medloc_core.curriculum.config.CurriculumConfig`; the baselines
with the same protocol (``base.Schedule``) are in ``baselines.py``. IoUs are unitless values in [0, 1]; only numpy
is imported.

Ambiguities of docs/method.md §3 that concern the caller rather than the config (the rest are listed in
:class:`CurriculumConfig`):
    A2  the reward reads ``threshold`` when it scores a batch; a raise in ``observe`` applies to the next batch.
    A13 feed ``observe`` the IoUs gathered from all ranks in a fixed order: the scheduler is deterministic, so
        every rank that feeds the same IoUs holds the same tau.
    A14 ``state_dict()`` holds tau, the window and the raise count; save it with each checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from medloc_core.curriculum.base import OneThreshold, check_state, entries_from, hits_at, iou_array
from medloc_core.curriculum.config import TOL, CurriculumConfig

# tau is rounded after every raise so that 0.3 + 0.15 is 0.45 exactly and band look-ups stay stable.
_TAU_DECIMALS = 10


class CurriculumScheduler(OneThreshold):
    """MedLoc-R1's performance-aware IoU threshold (docs/method.md §1).

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
        return self._tau >= self.config.tau_target - TOL

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
        for arr in entries_from(ious, cfg.window_unit, "CurriculumScheduler.observe"):
            self._window.append(arr)
            self._stored_hits.append(
                hits_at(arr, tau, self.ge) if not cfg.recompute_hits else np.empty(0, bool)
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
            "config": self.config.model_dump(mode="json"),
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
        check_state(state, "medloc")
        saved = CurriculumConfig.model_validate(state["config"])
        if strict_config and saved != self.config:
            diff = [
                name
                for name in CurriculumConfig.model_fields
                if getattr(saved, name) != getattr(self.config, name)
            ]
            raise ValueError(f"CurriculumScheduler.load_state_dict: saved config differs in {diff}")
        if len(state["window"]) != len(state["stored_hits"]):
            raise ValueError("CurriculumScheduler.load_state_dict: window and stored_hits lengths differ")
        self._tau = float(state["tau"])
        self._window = [iou_array(w, "state window") for w in state["window"]]
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
        hits = hits_at(values, tau, self.ge) if cfg.recompute_hits else np.concatenate(self._stored_hits)
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
            "cond_reward": bool(hit_rate >= cfg.min_hit_rate(tau) - TOL),
            "cond_stability": bool(std <= cfg.max_std(tau) + TOL),
            "cond_margin": bool(margin >= cfg.margin - TOL),
        }
