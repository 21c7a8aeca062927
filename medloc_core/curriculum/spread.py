"""``medloc_spread``: MedLoc-R1's sliding window with a threshold that keeps GRPO groups alive (docs/curriculum.md).

The paper's rule raises τ only when the window's hit rate, its spread and the IoU margin all clear their bars. It
has two failure modes on our benchmarks (bench/README.md §2): at a loose τ0 with a warm policy most dead groups
are *all hits* (the rule waits while the groups carry no signal), and with a weak policy and small targets the
bar is never met, τ stays at τ0 and the binary reward teaches the policy to clear the loose bar instead of
localizing. ``medloc_spread`` changes two things and keeps the rest (window of the last N steps' IoUs, τ0,
τ_target, a ratchet that never lowers τ, A2: a raise applies to the next batch):

* **Where τ goes.** After each step, τ moves up towards the window's IoU quantile at ``1 - target_hit_rate``
  (the 70th percentile for the default 0.3), by at most ``max_raise`` per step, capped at τ_target. The bar
  follows the policy up, so it cannot settle at a loose τ, and it always rewards the best ~30 % of the boxes: a
  group of G = 16 is then all-hit or all-miss with probability 0.3^16 + 0.7^16 < 0.4 %.
* **What a hit is worth.** The accuracy reward is ``1[IoU >= τ] + iou_weight * IoU`` (``rewards/grounding.py``,
  ``make_spread_reward``; default weight 2): the IoU term keeps every group with different boxes alive and makes
  a tight box worth more than a loose one that clears the same bar; the bar adds a bonus where the policy's
  best boxes are.

IoUs are unitless values in [0, 1]; only numpy and pydantic are imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medloc_core.curriculum.base import OneThreshold, check_state, entries_from, hits_at, iou_array

_TAU_DECIMALS = 10


class SpreadConfig(BaseModel):
    """Settings of ``medloc_spread`` (defaults: docs/curriculum.md).

    tau0, tau_target: τ starts at tau0 and never exceeds tau_target. window: N, steps of IoUs in the window; τ
    moves once the window is full. target_hit_rate: the window hit rate τ is placed at (τ follows the window's
    IoU quantile at 1 - target_hit_rate). max_raise: the most τ moves up in one step. iou_weight: weight of the
    IoU term of the reward. gate_iou: the IoU term counts for hits only, ``1[IoU >= τ] * (1 + iou_weight * IoU)``, so a
    loose box below the bar earns nothing. ge: a hit is IoU >= τ (False: IoU > τ).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tau0: float = Field(default=0.2, ge=0.0, le=1.0)
    tau_target: float = Field(default=0.8, ge=0.0, le=1.0)
    window: int = Field(default=10, ge=1)
    target_hit_rate: float = Field(default=0.3, gt=0.0, lt=1.0)
    max_raise: float = Field(default=0.05, gt=0.0, le=1.0)
    iou_weight: float = Field(default=2.0, ge=0.0)
    gate_iou: bool = False
    ge: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> SpreadConfig:
        if self.tau_target < self.tau0:
            raise ValueError("tau_target: must be in [tau0, 1]")
        return self


class SpreadSchedule(OneThreshold):
    """The ``medloc_spread`` threshold. Call :meth:`observe` once per step with that step's IoUs (flat or per
    group); :attr:`threshold` scores the next batch.

    ``stats`` after each observe: threshold (the τ that scored this step), hit_rate (window hit rate at that τ),
    iou_quantile (the window's IoU quantile τ moves towards), iou_margin (window mean IoU - τ), window_fill,
    all_hit_groups / all_miss_groups (shares of this step's groups, at that τ), raised, num_raises.
    """

    name = "medloc_spread"
    logs_each_raise = False  # τ moves by small steps most steps; the log shows it in the progress lines

    def __init__(self, config: SpreadConfig | None = None) -> None:
        self.config = config if config is not None else SpreadConfig()
        self.ge = self.config.ge
        self._tau = float(self.config.tau0)
        self._window: list[np.ndarray] = []
        self._num_raises = 0
        self._stats: dict[str, Any] = {"threshold": self._tau, "raised": False, "num_raises": 0}

    @property
    def threshold(self) -> float:
        """Current τ, in [tau0, tau_target]."""
        return self._tau

    def observe(self, ious: Any, step: int | None = None) -> bool:
        """Feed one step's IoUs (a flat list, or one list per group); returns True when τ was raised."""
        cfg = self.config
        groups = entries_from(ious, "group", "SpreadSchedule.observe")
        tau = self._tau
        self._window.append(np.concatenate(groups))
        del self._window[: max(0, len(self._window) - cfg.window)]
        values = np.concatenate(self._window)
        quantile = float(np.quantile(values, 1.0 - cfg.target_hit_rate))
        group_hits = [hits_at(g, tau, self.ge) for g in groups]
        raised = False
        if len(self._window) >= cfg.window and quantile > tau and tau < cfg.tau_target:
            self._tau = round(min(tau + cfg.max_raise, quantile, cfg.tau_target), _TAU_DECIMALS)
            raised = self._tau > tau
            self._num_raises += int(raised)
        self._stats = {
            "threshold": tau,
            "hit_rate": float(hits_at(values, tau, self.ge).mean()),
            "iou_quantile": quantile,
            "iou_margin": float(values.mean()) - tau,
            "window_fill": len(self._window) / cfg.window,
            "all_hit_groups": float(np.mean([h.all() for h in group_hits])),
            "all_miss_groups": float(np.mean([not h.any() for h in group_hits])),
            "raised": raised,
            "num_raises": self._num_raises,
        }
        return raised

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically; JSON-serializable."""
        return {
            "kind": "medloc_spread",
            "config": self.config.model_dump(mode="json"),
            "tau": self._tau,
            "window": [w.tolist() for w in self._window],
            "num_raises": self._num_raises,
            "stats": dict(self._stats),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the saved config must equal this one)."""
        check_state(state, "medloc_spread")
        saved = SpreadConfig.model_validate(state["config"])
        if saved != self.config:
            raise ValueError(
                f"SpreadSchedule.load_state_dict: saved config {saved} differs from {self.config}"
            )
        self._tau = float(state["tau"])
        self._window = [iou_array(w, "state window") for w in state["window"]]
        self._num_raises = int(state["num_raises"])
        self._stats = dict(state["stats"])
