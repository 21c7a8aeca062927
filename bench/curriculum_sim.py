"""The curriculum benchmark's policy-free simulation (``--simulate``): no model, simulated IoU draws through the
same reward functions, tracker and schedules. A sanity model of the mechanism, not evidence."""

from __future__ import annotations

import argparse
from typing import Any

import common  # noqa: E402  (sets sys.path to the repo root; must precede torch)
from curriculum_report import (  # noqa: E402
    early_steps,  # noqa: E402
)

from medloc_core.curriculum import SCHEDULE_NAMES as SCHEDULES


def simulate(args: argparse.Namespace, prepared: Any) -> str:
    """Policy-free model of the mechanism (an extra, not the benchmark): per prompt, G boxes are drawn around the
    true box with a relative error sigma (the policy's skill); they go through the real reward functions, tracker
    and schedules. The skill improves only by the GRPO signal: sigma *= 1 - lr * mean over groups of the
    correlation between the group's advantages and box precision (0 for a dead group). It ignores everything a
    real policy does besides that (format, KL, reward hacking), so read it as a sanity model only."""
    import numpy as np

    from medloc_core.curriculum import make_schedule
    from medloc_core.curriculum.config import CurriculumConfig
    from medloc_core.rewards import grounding
    from medloc_core.rewards.tracker import RewardTracker

    rows = prepared[prepared["split"] == "train"].reset_index(drop=True)
    gts = rows[["in_x1", "in_y1", "in_x2", "in_y2"]].to_numpy(dtype=np.float64)
    g, p, steps = args.group_size, args.prompts_per_step, args.steps
    out: dict[str, list[dict[str, float]]] = {}
    for name in SCHEDULES:
        for seed in args.seeds:
            rng = np.random.default_rng([seed, 7])
            if name == "medloc":
                sched = make_schedule("medloc", CurriculumConfig(window=args.window))
            elif name == "fixed":
                sched = make_schedule("fixed", tau=0.5)
            else:
                sched = make_schedule(name, total_steps=steps)
            tracker = RewardTracker()
            reward = grounding.make_reward_for_schedule(sched, tracker)
            sigma, dead_trace = args.sim_sigma0, []
            for _ in range(steps):
                idx = rng.integers(0, len(gts), size=p).repeat(g)
                gt = gts[idx]
                wh = np.stack([gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]] * 2, axis=1)
                err = rng.normal(0.0, sigma, size=gt.shape) * wh
                boxes = gt + err
                comps = [
                    f'<answer>{{"bbox_2d": [{b[0]:.0f}, {b[1]:.0f}, {b[2]:.0f}, {b[3]:.0f}]}}</answer>'
                    for b in boxes
                ]
                r = np.asarray(reward(None, comps, bbox=gt.tolist()), dtype=np.float64).reshape(p, g)
                ious = np.asarray(tracker.pop_step().ious).reshape(p, g)
                sched.observe(ious.tolist())
                precision = -np.abs(err / wh).mean(axis=1).reshape(p, g)
                std = r.std(axis=1)
                dead = std == 0
                signal = 0.0
                for i in np.flatnonzero(~dead):
                    adv = (r[i] - r[i].mean()) / (r[i].std() + 1e-4)
                    if precision[i].std() > 0:
                        signal += float(np.corrcoef(adv, precision[i])[0, 1])
                sigma *= 1.0 - args.sim_lr * signal / p
                sigma = max(sigma, 0.02)
                dead_trace.append(float(dead.mean()))
            k = early_steps(steps)
            # final skill measured greedily: IoU of a box with the mean absolute error sigma*sqrt(2/pi)
            test = gts + rng.normal(0.0, sigma, size=gts.shape) * np.stack(
                [gts[:, 2] - gts[:, 0], gts[:, 3] - gts[:, 1]] * 2, axis=1
            )
            from medloc_core.boxes import iou_pairs

            u = iou_pairs(test, gts)
            out.setdefault(name, []).append(
                {
                    "dead_early": sum(dead_trace[:k]) / k,
                    "dead_all": sum(dead_trace) / len(dead_trace),
                    "A@0.5": 100 * float((u >= 0.5).mean()),
                    "mIoU": float(u.mean()),
                    "final_sigma": sigma,
                }
            )
    lines = [
        f"POLICY-FREE SIMULATION (not the benchmark; see bench/curriculum_sim.py): sigma0 = "
        f"{args.sim_sigma0}, lr = {args.sim_lr}, {steps} steps, {len(args.seeds)} seeds.",
        "",
        "| schedule | dead early | dead all | A@0.5 (%) | mIoU | final sigma |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in out.items():
        lines.append(
            f"| {name} | {common.fmt_pm(r['dead_early'] for r in res)} | {common.fmt_pm(r['dead_all'] for r in res)} | "
            f"{common.fmt_pm((r['A@0.5'] for r in res), 1)} | {common.fmt_pm((r['mIoU'] for r in res), 3)} | "
            f"{common.fmt_pm((r['final_sigma'] for r in res), 3)} |"
        )
    return "\n".join(lines) + "\n"
