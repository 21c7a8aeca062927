"""The model card written on each registered version (its MLflow description, Markdown) and the registered
model's own description: recipe, data, metrics with intervals, the curriculum trace, intended use and limits.
Plain functions of what the pipeline's steps return; the register step writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medloc_core.run_summary import HEADLINE, sft_line, tau_line, versus

#: The card's first line: what follows it in a version's description is the card.
CARD_HEADING = "## Model card"

MODEL_DESCRIPTION = (
    'Qwen2.5-VL grounding model: given a medical image and a query ("where is the lesion?") it answers a '
    "bounding box (x1, y1, x2, y2) in the image's pixels. Trained by MedLoc (GRPO with the MedLoc-R1 IoU "
    "curriculum); each version's description is its model card. Alias `champion`: the version that passed the "
    "promotion gate; `challenger`: the newest. For research use; not a medical device."
)

INTENDED_USE = (
    "Research on visual grounding of findings in medical images: proposing a box for a finding named in the "
    "query, for review by a person. Not a medical device; not validated for diagnosis or treatment decisions."
)


def _data_lines(manifest: Mapping[str, Any]) -> list[str]:
    counts = manifest.get("counts") or {}
    by_split = counts.get("by_split") or {}
    lines = [
        f"- {name}: " + ", ".join(f"{split} {n}" for split, n in (splits or {}).items())
        for name, splits in (counts.get("by_dataset") or {}).items()
    ]
    split = ", ".join(f"{s} {n}" for s, n in by_split.items())
    return [f"{counts.get('records', '?')} records ({split}), split by group with no leakage:", *lines]


def model_card(
    *,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    base_metrics: Mapping[str, Any],
    manifest: Mapping[str, Any],
    recipe: Mapping[str, Any],
    run_id: str | None,
) -> str:
    """The version's model card (Markdown). ``recipe``: the training settings worth naming (model, schedule,
    steps, group size, learning rate, ...); ``training``: the train step's summary (SFT handover, τ raises)."""
    trace = [sft_line(training.get("sft")), tau_line(training)]
    shown = [versus(metrics, base_metrics, name) for name in HEADLINE if f"eval/{name}" in metrics]
    recipe_lines = [f"- {key}: {value}" for key, value in recipe.items()]
    parts = [
        CARD_HEADING,
        "",
        "### Intended use and limits",
        INTENDED_USE,
        "Trained and evaluated on the data below only; boxes on other modalities, scanners or populations are "
        "unmeasured. A@0.8 (tight boxes) stays far below A@0.5. Answers that do not parse are returned as null.",
        "",
        "### Recipe",
        *recipe_lines,
        "",
        "### Data",
        *_data_lines(manifest),
        f"- preprocessing: answer style {manifest.get('answer_style')}, pixels {manifest.get('min_pixels')}"
        f"..{manifest.get('max_pixels')}, manifest hash {str(manifest.get('hash', ''))[:12]}",
        "",
        "### Curriculum trace",
        *[f"- {line}" for line in trace],
        "",
        "### Test metrics (95 % bootstrap intervals; vs the SFT start; gain paired per image)",
        *[f"- {line}" for line in shown],
        "",
        f"Pipeline run (MLflow): {run_id or 'none'}",
    ]
    return "\n".join(parts) + "\n"


def write_model_card(client: Any, name: str, version: int | str, card: str) -> None:
    """Put ``card`` on the version, after the gate's decision (kept), and :data:`MODEL_DESCRIPTION` on the
    registered model."""
    client.update_registered_model(name, description=MODEL_DESCRIPTION)
    current = client.get_model_version(name, str(version)).description or ""
    gate = current.partition(CARD_HEADING)[0].rstrip()
    client.update_model_version(name, str(version), description=(f"{gate}\n\n" if gate else "") + card)
