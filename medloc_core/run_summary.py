"""The closing summary of a run, the lines a person reads at the end of the log: the SFT handover, the τ path,
the trained model against its starting point with 95 % bootstrap intervals, the gate's decision, and the
MLflow and ZenML runs to open. Plain functions of the steps' outputs; the register step logs them.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Metrics shown trained vs base, in this order (``eval/<name>``; A@τ in %, mIoU in IoU units).
HEADLINE = ("A@0.5", "A@0.8", "mIoU")


def _ci(values: Mapping[str, Any], key: str) -> str:
    low, high = values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high")
    return "" if low is None or high is None else f" [{low:.3g}, {high:.3g}]"


def versus(metrics: Mapping[str, Any], base: Mapping[str, Any], name: str) -> str:
    """``A@0.5 71.4 [63, 79] vs 51.3 [42, 60.5]: +20.2 [+12.6, +27.7]``: the trained model (``metrics``, which
    holds the paired gain ``eval/gain/<name>`` too) vs the base model, 95 % bootstrap intervals."""
    key, gain = f"eval/{name}", f"eval/gain/{name}"
    text = f"{name} {metrics[key]:.3g}{_ci(metrics, key)}"
    if key in base:
        text += f" vs {base[key]:.3g}{_ci(base, key)}"
    if gain in metrics:
        low, high = metrics.get(f"{gain}_ci_low"), metrics.get(f"{gain}_ci_high")
        interval = "" if low is None or high is None else f" [{low:+.3g}, {high:+.3g}]"
        text += f": {metrics[gain]:+.3g}{interval}"
    return text


def tau_raises(history: Iterable[Mapping[str, Any]]) -> list[list[float]]:
    """``[[step, old τ, new τ], ...]`` for every raise in a training history (``history.jsonl`` rows: the τ that
    scored a step is its ``curriculum/threshold``; the new τ is the next step's)."""
    rows = [r for r in history if r.get("curriculum/threshold") is not None]
    raises = []
    for row, after in zip(rows, [*rows[1:], None], strict=False):
        if row.get("curriculum/raised"):
            new = after["curriculum/threshold"] if after is not None else None
            raises.append([int(row["step"]), float(row["curriculum/threshold"]), new])
    return raises


def sft_line(sft: Mapping[str, Any] | None) -> str:
    if not sft or not sft.get("steps"):
        return "SFT warm-up: none (GRPO started from the base model)"
    checks = sft.get("val_checks") or []
    if sft.get("stopped_early") and checks:
        return (
            f"SFT warm-up: handed over at step {sft['steps']} of {sft.get('max_steps', '?')} (val hit rate at "
            f"IoU ≥ {sft.get('stop_iou', 0.5)} = {checks[-1][1]:.3f} ≥ {sft.get('stop_hit_rate')})"
        )
    last = f"; last val hit rate {checks[-1][1]:.3f}" if checks else ""
    return f"SFT warm-up: all {sft['steps']} steps{last}"


def tau_line(training: Mapping[str, Any]) -> str:
    raises = training.get("tau_raises") or []
    head = f"GRPO: {training.get('steps', '?')} steps, {training.get('seconds_per_step', 0):.2f} s/step"
    if training.get("final_threshold") is None:
        return f"{head}; schedule {training.get('schedule')} (no IoU threshold)"
    if not raises:
        return f"{head}; τ stayed at {training['final_threshold']:.2f} (never raised)"
    if len(raises) > 6:  # medloc_spread moves τ by small steps
        return (
            f"{head}; τ {raises[0][1]:.2f} → {training['final_threshold']:.2f} in {len(raises)} raises "
            f"(after steps {raises[0][0]}–{raises[-1][0]})"
        )
    path = f"{raises[0][1]:.2f}" + "".join(
        f" → {new if new is not None else training['final_threshold']:.2f} (after step {step})"
        for step, _, new in raises
    )
    return f"{head}; τ {path}"


def _gate_line(promotion: Mapping[str, Any], model_name: str) -> str:
    reasons = "; ".join(promotion.get("reasons") or [])
    if not promotion.get("registered"):
        return f"Registry: not registered ({reasons})"
    where = "champion" if promotion.get("promoted") else "challenger (not promoted)"
    return f"Registry: {model_name} version {promotion['version']} is {where}: {reasons}"


def summary_lines(
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    base_metrics: Mapping[str, Any],
    promotion: Mapping[str, Any],
    *,
    model_name: str,
    links: Sequence[str] = (),
) -> list[str]:
    """The closing summary, one string per log line (``links``: where to look, appended as they are)."""
    lines = ["Summary of this run", sft_line(training.get("sft")), tau_line(training)]
    shown = [versus(metrics, base_metrics, name) for name in HEADLINE if f"eval/{name}" in metrics]
    if shown:
        lines.append("Test split, trained vs the SFT start (95 % bootstrap intervals; gain paired):")
        lines += [f"  {text}" for text in shown]
    lines.append(_gate_line(promotion, model_name))
    return lines + list(links)


def html_report(lines: Sequence[str], card: str, plots: Sequence[Path]) -> str:
    """One self-contained HTML page: the summary ``lines``, the model ``card`` (Markdown, shown as text) and the
    PNG ``plots`` embedded (base64), for dashboards that render an artifact (ZenML's HTML visualization)."""
    images = "".join(
        f'<h3>{html.escape(p.stem)}</h3><img style="max-width:100%" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"/>'
        for p in plots
    )
    summary = "<br/>".join(html.escape(line) for line in lines)
    card_html = f"<pre>{html.escape(card)}</pre>" if card else ""
    return f"<html><body><h2>MedLoc run</h2><p>{summary}</p>{card_html}{images}</body></html>"
