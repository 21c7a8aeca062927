"""The curriculum benchmark's outputs: the markdown tables (means over seeds, per run), the CSV and traces, and the
plot of tau and dead groups per step (``bench/curriculum.py`` runs the schedules)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import common  # noqa: E402  (sets sys.path to the repo root; must precede torch)

EARLY_FRACTION = 0.3


def early_steps(total: int) -> int:
    """Number of steps in the first 30 % (at least 1)."""
    return max(1, math.ceil(EARLY_FRACTION * total))


def write_outputs(runs: list[dict[str, Any]], sft_evals: dict[int, dict[str, float]], args, note: str) -> str:
    out = common.RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stem = f"curriculum_{args.regime}" + ("_ds" if args.dynamic_sampling else "")
    rows = [r["summary"] for r in runs]
    with (out / f"{stem}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    # Everything the report is built from, per-image test IoUs included: `python bench/curriculum_report.py
    # bench/results/<stem>_runs.json` rebuilds the tables and the plot.
    keep = [{k: r[k] for k in ("summary", "traces", "eval")} for r in runs]
    saved = {
        "args": vars(args),
        "note": note,
        "runs": keep,
        "sft_evals": {str(k): v for k, v in sft_evals.items()},
    }
    (out / f"{stem}_runs.json").write_text(json.dumps(saved, separators=(",", ":"), default=str) + "\n")
    traces = {f"{r['summary']['schedule']}/seed{r['summary']['seed']}": r["traces"] for r in runs}
    for key, tr in traces.items():
        traces[key] = {k: [None if v is None else round(float(v), 4) for v in vals] for k, vals in tr.items()}
    (out / f"{stem}_traces.json").write_text(json.dumps(traces, separators=(",", ":")) + "\n")
    md = table_markdown(rows, sft_evals, args, note)
    names = list(dict.fromkeys(r["schedule"] for r in rows))
    new = (
        "medloc_spread"
        if "medloc_spread" in names
        else next((n for n in names if n.startswith("medloc_spread")), None)
    )
    if new is not None:
        start = [
            {"summary": {"schedule": "SFT start", "seed": seed, "dead_acc_early": float("nan")}, "eval": ev}
            for seed, ev in sft_evals.items()
            if "ious" in ev
        ]
        md += "\n".join(paired_markdown(runs + start, new)) + "\n"
    (out / f"{stem}.md").write_text(md)
    plot(runs, args, out / f"{stem}.png")
    return md


def table_markdown(
    rows: list[dict[str, Any]], sft_evals: dict[int, dict[str, float]], args, note: str
) -> str:
    seeds = sorted({r["seed"] for r in rows})
    k = early_steps(args.steps)
    lines = [
        f"Curriculum benchmark, regime `{args.regime}`: {len(seeds)} seed(s) {seeds}, {args.steps} GRPO steps of "
        f"{args.prompts_per_step} prompts x {args.group_size} completions, SFT warm-up {args.sft_steps} steps "
        f"(shared per seed), early = first {k} steps. mean ± std over seeds. {note}",
        "",
        "| schedule | dead groups, acc. reward, early | of which all-hit / all-miss | dead, acc., all | "
        "dead, total reward (TRL), early | live groups trained, early | A@0.5 (%) | A@0.8 (%) | mIoU | "
        "train IoU early -> late | final tau | raises | GRPO wall (s) | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["schedule"] for r in rows):
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
                    f"{common.fmt_pm(r['dead_hit_early'] for r in sel)} / "
                    f"{common.fmt_pm(r['dead_miss_early'] for r in sel)}",
                    common.fmt_pm(r["dead_acc_all"] for r in sel),
                    common.fmt_pm(r["dead_all_early"] for r in sel),
                    common.fmt_pm(r["trained_live_early"] for r in sel),
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
    """Per GRPO step, mean over seeds: accuracy-reward dead-group rate, its all-hit (solid) / all-miss (dashed)
    split, tau, and the hit rate at the scoring tau (raw_iou: IoU >= 0.5); rates as 10-step moving means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax4, ax2, ax3) = plt.subplots(1, 4, figsize=(17, 3.6), dpi=80)
    for name in dict.fromkeys(r["summary"]["schedule"] for r in runs):
        sel = [r["traces"] for r in runs if r["summary"]["schedule"] == name]
        if not sel:
            continue
        n = min(len(t["dead_acc"]) for t in sel)
        dead = [sum(t["dead_acc"][i] for t in sel) / len(sel) for i in range(n)]
        (line,) = ax1.plot(range(1, n + 1), _smooth(dead, 10), label=name)
        for key, style in (("dead_hit", "-"), ("dead_miss", "--")):
            if all(key in t for t in sel):
                part = [sum(t[key][i] for t in sel) / len(sel) for i in range(n)]
                label = f"{name} all-{key[5:]}"
                ax4.plot(range(1, n + 1), _smooth(part, 10), ls=style, color=line.get_color(), label=label)
        if all(v is not None for t in sel for v in t["tau"][:n]):
            tau = [sum(t["tau"][i] for t in sel) / len(sel) for i in range(n)]
            ax2.plot(range(1, n + 1), tau, color=line.get_color(), label=name)
        if all("hit" in t for t in sel):
            hit = [sum(t["hit"][i] for t in sel) / len(sel) for i in range(n)]
            ax3.plot(range(1, n + 1), _smooth(hit, 10), color=line.get_color(), label=name)
    k = early_steps(args.steps)
    for ax in (ax1, ax4, ax2, ax3):
        ax.axvline(k + 0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("GRPO step")
    ax1.set_ylabel("dead groups (acc. reward)")
    ax1.set_ylim(-0.02, 1.02)
    ax4.set_ylabel("dead groups: all-hit (solid) / all-miss (dashed)")
    ax4.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("IoU threshold tau (mean over seeds)")
    ax3.set_ylabel("hit rate at the scoring tau")
    ax3.set_ylim(-0.02, 1.02)
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=8)
    ax4.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def dead_split(schedule: Any, ious: list[float], tau: float | None, group_size: int) -> tuple[float, float]:
    """(all-hit, all-miss) shares of dead groups in one step: the training callback's own definition
    (``medloc_core.training.callbacks.dead_group_split``: zero spread of the accuracy reward at the scoring τ)."""
    from medloc_core.training.callbacks import dead_group_split

    if not ious or len(ious) % group_size:
        raise ValueError(f"{len(ious)} IoUs do not split into groups of {group_size}")
    split = dead_group_split(list(ious), [None] * len(ious), group_size, schedule, {}, tau)
    return split["train/dead_all_hit"], split["train/dead_all_miss"]


def _t95(n: int) -> float:
    """Two-sided 95 % Student t quantile for n - 1 degrees of freedom (n >= 2)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    return table.get(n - 1, 1.96 + 2.5 / (n - 1))


def paired_markdown(runs: list[dict[str, Any]], new: str) -> list[str]:
    """``new`` against every other schedule, per seed on the same test images: the difference in A@0.5 and A@0.8
    (points) with a paired bootstrap 95 % interval over the images, and the ratio of early dead groups; then the
    mean difference over seeds with a t interval over seeds, and the worst seed."""
    import numpy as np
    import pandas as pd

    from medloc_core.evaluation.metrics import paired_gain

    by = {(r["summary"]["schedule"], r["summary"]["seed"]): r for r in runs}
    seeds = sorted({seed for name, seed in by if name == new})
    others = [name for name in dict.fromkeys(r["summary"]["schedule"] for r in runs) if name != new]
    lines = [
        "",
        f"Paired: `{new}` minus each schedule, per seed on the same test images (points; [paired bootstrap 95 %"
        " over images]); early dead groups as new / baseline. Over seeds: mean [t 95 % over seeds], worst seed.",
        "",
        "| vs | seed | Δ A@0.5 | Δ A@0.8 | Δ mIoU | early dead new / base |",
        "|---|---|---|---|---|---|",
    ]
    summary = ["", "| vs | mean Δ A@0.5 | worst | mean Δ A@0.8 | worst | early dead new / base (mean) |",
               "|---|---|---|---|---|---|"]  # fmt: skip

    def frame(run: dict[str, Any]) -> pd.DataFrame:
        ious = run["eval"]["ious"]
        return pd.DataFrame({"record_id": list(ious), "iou": list(ious.values())})

    for other in others:
        d05, d08, ratios = [], [], []
        for seed in seeds:
            a, b = by.get((new, seed)), by.get((other, seed))
            if a is None or b is None:
                continue
            gain = paired_gain(frame(a), frame(b), n_boot=1000, seed=seed)
            g05, g08 = gain["eval/gain/A@0.5"], gain["eval/gain/A@0.8"]
            da, db = a["summary"]["dead_acc_early"], b["summary"]["dead_acc_early"]
            ratio = da / db if db > 0 else float("nan")
            d05.append(g05), d08.append(g08), ratios.append(ratio)
            lines.append(
                f"| {other} | {seed} | {g05:+.1f} [{gain['eval/gain/A@0.5_ci_low']:+.1f}, "
                f"{gain['eval/gain/A@0.5_ci_high']:+.1f}] | {g08:+.1f} [{gain['eval/gain/A@0.8_ci_low']:+.1f}, "
                f"{gain['eval/gain/A@0.8_ci_high']:+.1f}] | {gain['eval/gain/mIoU']:+.3f} | "
                f"{da:.2f} / {db:.2f} = {ratio:.2f} |"
            )
        if not d05:
            continue

        def mean_ci(values: list[float]) -> str:
            m = float(np.mean(values))
            if len(values) < 2:
                return f"{m:+.1f}"
            half = _t95(len(values)) * float(np.std(values, ddof=1)) / len(values) ** 0.5
            return f"{m:+.1f} [{m - half:+.1f}, {m + half:+.1f}]"

        finite = [r for r in ratios if math.isfinite(r)]
        ratio_text = f"{np.mean(finite):.2f}" if finite else "n/a"
        summary.append(
            f"| {other} | {mean_ci(d05)} | {min(d05):+.1f} | {mean_ci(d08)} | {min(d08):+.1f} | {ratio_text} |"
        )
    return summary + lines


def main(argv: list[str] | None = None) -> None:
    """Rebuild ``<stem>.md``/``.csv``/``.png`` from saved ``<stem>_runs.json`` files. Several files are merged in
    order (a later run of the same schedule and seed replaces an earlier one); ``--rename I:OLD=NEW`` renames
    schedule OLD of the I-th file (0-based) first. Output names follow the first file's regime."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("runs_json", type=Path, nargs="+")
    parser.add_argument("--rename", action="append", default=[], metavar="I:OLD=NEW")
    opts = parser.parse_args(argv)
    renames: dict[int, dict[str, str]] = {}
    for item in opts.rename:
        index, pair = item.split(":", 1)
        old, new = pair.split("=", 1)
        renames.setdefault(int(index), {})[old] = new
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    first = None
    for i, path in enumerate(opts.runs_json):
        saved = json.loads(path.read_text())
        first = first or saved
        for run in saved["runs"]:
            name = renames.get(i, {}).get(run["summary"]["schedule"], run["summary"]["schedule"])
            run["summary"]["schedule"] = name
            merged[(name, run["summary"]["seed"])] = run
    args = argparse.Namespace(**first["args"])
    sft_evals = {int(k): v for k, v in first["sft_evals"].items()}
    note = first["note"] + (
        f" Merged from {len(opts.runs_json)} runs files." if len(opts.runs_json) > 1 else ""
    )
    print(write_outputs(list(merged.values()), sft_evals, args, note))


if __name__ == "__main__":
    main()
