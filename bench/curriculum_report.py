"""The curriculum benchmark's outputs: the markdown tables (means over seeds, per run), the CSV and traces, and the
plot of tau and dead groups per step (``bench/curriculum.py`` runs the schedules)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import common  # noqa: E402  (sets sys.path to the repo root; must precede torch)

from medloc_core.curriculum import SCHEDULE_NAMES as SCHEDULES

EARLY_FRACTION = 0.3


def early_steps(total: int) -> int:
    """Number of steps in the first 30 % (at least 1)."""
    return max(1, math.ceil(EARLY_FRACTION * total))


def write_outputs(runs: list[dict[str, Any]], sft_evals: dict[int, dict[str, float]], args, note: str) -> str:
    out = common.RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    rows = [r["summary"] for r in runs]
    with (out / "curriculum.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    traces = {f"{r['summary']['schedule']}/seed{r['summary']['seed']}": r["traces"] for r in runs}
    for key, tr in traces.items():
        traces[key] = {k: [None if v is None else round(float(v), 4) for v in vals] for k, vals in tr.items()}
    (out / "curriculum_traces.json").write_text(json.dumps(traces, separators=(",", ":")) + "\n")
    md = table_markdown(rows, sft_evals, args, note)
    (out / "curriculum.md").write_text(md)
    plot(runs, args, out / "curriculum.png")
    return md


def table_markdown(
    rows: list[dict[str, Any]], sft_evals: dict[int, dict[str, float]], args, note: str
) -> str:
    seeds = sorted({r["seed"] for r in rows})
    k = early_steps(args.steps)
    lines = [
        f"Curriculum benchmark: {len(seeds)} seed(s) {seeds}, {args.steps} GRPO steps of "
        f"{args.prompts_per_step} prompts x {args.group_size} completions, SFT warm-up {args.sft_steps} steps "
        f"(shared per seed), early = first {k} steps. mean ± std over seeds. {note}",
        "",
        "| schedule | dead groups, acc. reward, early | dead, acc., all | dead, total reward (TRL), early | "
        "dead, total, all | A@0.5 (%) | A@0.8 (%) | mIoU | train IoU early -> late | final tau | raises | "
        "GRPO wall (s) | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SCHEDULES:
        sel = [r for r in rows if r["schedule"] == name]
        if not sel:
            continue
        taus = [r["final_tau"] for r in sel]
        tau = "none" if any(t is None for t in taus) else common.fmt_pm(taus)
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    common.fmt_pm(r["dead_acc_early"] for r in sel),
                    common.fmt_pm(r["dead_acc_all"] for r in sel),
                    common.fmt_pm(r["dead_all_early"] for r in sel),
                    common.fmt_pm(r["dead_all_all"] for r in sel),
                    common.fmt_pm((r["A@0.5"] for r in sel), 1),
                    common.fmt_pm((r["A@0.8"] for r in sel), 1),
                    common.fmt_pm((r["mIoU"] for r in sel), 3),
                    f"{common.fmt_pm((r['train_iou_early'] for r in sel), 3)} -> "
                    f"{common.fmt_pm((r['train_iou_late'] for r in sel), 3)}",
                    tau,
                    common.fmt_pm((r["num_raises"] for r in sel), 1),
                    common.fmt_pm((r["wall_s"] for r in sel), 0),
                    common.fmt_pm((r["seconds_per_step"] for r in sel), 2),
                ]
            )
            + " |"
        )
    if sft_evals:
        ev = list(sft_evals.values())
        lines += [
            "",
            f"SFT checkpoint alone (before GRPO), test split: A@0.5 {common.fmt_pm((e['eval/A@0.5'] for e in ev), 1)} %,"
            f" A@0.8 {common.fmt_pm((e['eval/A@0.8'] for e in ev), 1)} %, mIoU {common.fmt_pm((e['eval/mIoU'] for e in ev), 3)},"
            f" test n = {int(ev[0]['eval/n'])}.",
        ]
    lines += [
        "",
        "Per run:",
        "",
        "| schedule | seed | dead acc. early | dead acc. all | A@0.5 | A@0.8 | mIoU | final tau |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tau = "none" if r["final_tau"] is None else f"{r['final_tau']:.2f}"
        lines.append(
            f"| {r['schedule']} | {r['seed']} | {r['dead_acc_early']:.2f} | {r['dead_acc_all']:.2f} | "
            f"{r['A@0.5']:.1f} | {r['A@0.8']:.1f} | {r['mIoU']:.3f} | {tau} |"
        )
    return "\n".join(lines) + "\n"


def _smooth(values: list[float], width: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - width + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot(runs: list[dict[str, Any]], args, path: Path) -> None:
    """Per GRPO step, mean over seeds: accuracy-reward dead-group rate (10-step moving mean), tau, and the hit
    rate at the scoring tau (10-step moving mean; raw_iou: IoU >= 0.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.4), dpi=80)
    for name in SCHEDULES:
        sel = [r["traces"] for r in runs if r["summary"]["schedule"] == name]
        if not sel:
            continue
        n = min(len(t["dead_acc"]) for t in sel)
        dead = [sum(t["dead_acc"][i] for t in sel) / len(sel) for i in range(n)]
        (line,) = ax1.plot(range(1, n + 1), _smooth(dead, 10), label=name)
        if all(v is not None for t in sel for v in t["tau"][:n]):
            tau = [sum(t["tau"][i] for t in sel) / len(sel) for i in range(n)]
            ax2.plot(range(1, n + 1), tau, color=line.get_color(), label=name)
        if all("hit" in t for t in sel):
            hit = [sum(t["hit"][i] for t in sel) / len(sel) for i in range(n)]
            ax3.plot(range(1, n + 1), _smooth(hit, 10), color=line.get_color(), label=name)
    k = early_steps(args.steps)
    for ax in (ax1, ax2, ax3):
        ax.axvline(k + 0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("GRPO step")
    ax1.set_ylabel("dead groups (acc. reward)")
    ax1.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("IoU threshold tau (mean over seeds)")
    ax3.set_ylabel("hit rate at the scoring tau")
    ax3.set_ylim(-0.02, 1.02)
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def accuracy_rewards(schedule: str, ious: Any, tau: float | None) -> Any:
    """The accuracy reward each schedule gives for IoUs ``ious`` at threshold ``tau`` (mirrors
    ``medloc_core.rewards.grounding.make_reward_for_schedule``; ``>=`` as the schedules' default ``ge=True``)."""
    import numpy as np

    u = np.asarray(ious, dtype=np.float64)
    if schedule == "raw_iou":
        return u
    if tau is None:
        raise ValueError(f"schedule {schedule!r} needs a threshold")
    hit = u >= tau
    return u * hit if schedule == "vtriune" else hit.astype(np.float64)


def dead_group_fraction(schedule: str, ious: Any, tau: float | None, group_size: int) -> float:
    """Share of groups (consecutive ``group_size`` completions) whose accuracy rewards are all equal."""
    import numpy as np

    u = np.asarray(ious, dtype=np.float64)
    if u.size == 0 or u.size % group_size:
        raise ValueError(f"{u.size} IoUs do not split into groups of {group_size}")
    r = accuracy_rewards(schedule, u, tau).reshape(-1, group_size)
    return float(np.mean(np.ptp(r, axis=1) == 0.0))
