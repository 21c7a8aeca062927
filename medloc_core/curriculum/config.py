"""The MedLoc-R1 curriculum's settings: one typed, validated model (``training.curriculum:`` in a run config).

Thresholds are IoUs in [0, 1]; ``window`` counts entries (steps, or prompt groups). The rule these settings feed
is specified in ``docs/method.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

StepSchedule = Literal["piecewise", "linear", "cosine"]
WindowUnit = Literal["step", "group"]
StdKind = Literal["per_entry_hit_rate", "pooled"]
StdEstimator = Literal["population", "sample"]

# Comparisons of window statistics against P, S and Delta allow this slack, so that e.g. a hit rate of
# 24/30 computed as a float mean still counts as >= 0.8.
TOL = 1e-9


def _lookup(table: Sequence[tuple[float, float]], tau: float) -> float:
    """Value of the first ``(upper_bound, value)`` entry with ``tau < upper_bound``; past the end, the last value."""
    for upper, value in table:
        if tau < upper - TOL:
            return value
    return table[-1][1]


class CurriculumConfig(BaseModel):
    """MedLoc-R1 curriculum settings. Defaults follow docs/method.md §2; each unstated detail is an option.

    Core parameters (§1(d)):
        tau0=0.3, tau_target=0.8 (the threshold starts and ends here), window=30 (N), margin=0.10 (Delta),
        step_schedule="piecewise" ("linear" and "cosine" are the paper's alternatives).

    Ambiguities of docs/method.md §3 and the chosen defaults:
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
    Ablation switches (docs/method.md §4): use_reward_check, use_stability_check, use_margin_check. A
    disabled condition counts as satisfied; its flag in ``stats`` still reports the comparison.

    Tables are tuples of ``(upper_bound, value)`` read as "value while tau < upper_bound"; a tau past the last
    bound uses the last value. p_table = min window hit rate P(tau), s_table = max window std S(tau).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tau0: float = Field(default=0.3, ge=0.0, le=1.0)
    tau_target: float = Field(default=0.8, ge=0.0, le=1.0)
    window: int = Field(default=30, ge=2)
    margin: float = 0.10
    step_schedule: StepSchedule = "piecewise"
    piecewise_steps: tuple[float, float, float] = (0.15, 0.10, 0.05)
    piecewise_boundaries: tuple[float, float] = (0.55, 0.75)
    delta0: float = Field(default=0.2, gt=0.0)
    min_step: float = Field(default=0.05, ge=0.0)
    p_table: tuple[tuple[float, float], ...] = ((0.60, 0.80), (0.75, 0.75), (1.0, 0.55))
    s_table: tuple[tuple[float, float], ...] = ((0.60, 0.20), (0.75, 0.35), (1.0, 0.40))
    window_unit: WindowUnit = "step"
    std_kind: StdKind = "per_entry_hit_rate"
    std_estimator: StdEstimator = "population"
    recompute_hits: bool = True
    require_full_window: bool = True
    refresh_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    ge: bool = True
    use_reward_check: bool = True
    use_stability_check: bool = True
    use_margin_check: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> CurriculumConfig:
        if self.tau_target < self.tau0:
            raise ValueError("tau_target: must be in [tau0, 1]")
        if any(s <= 0 for s in self.piecewise_steps):
            raise ValueError("piecewise_steps: must be 3 positive step sizes")
        if self.piecewise_boundaries[0] > self.piecewise_boundaries[1]:
            raise ValueError("piecewise_boundaries: must be 2 increasing thresholds")
        if self.step_schedule != "piecewise" and self.min_step <= 0 and self.tau_target > self.tau0:
            raise ValueError("min_step: linear/cosine decay needs min_step > 0 to reach tau_target")
        for name in ("p_table", "s_table"):
            table = getattr(self, name)
            if not table or any(table[i][0] > table[i + 1][0] for i in range(len(table) - 1)):
                raise ValueError(
                    f"{name}: must be a non-empty tuple of (upper_bound, value) with increasing bounds"
                )
        return self

    def step_size(self, tau: float) -> float:
        """delta(tau): how far tau moves on a raise (before capping at tau_target)."""
        if self.step_schedule == "piecewise":
            b1, b2 = self.piecewise_boundaries
            s1, s2, s3 = self.piecewise_steps
            if tau < b1 - TOL:
                return s1
            return s2 if tau < b2 - TOL else s3
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
