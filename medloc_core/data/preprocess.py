"""Preprocessing: leakage-free splits, prompt text, and the Qwen2.5-VL model-input frame for every record.

Adds to the records table: ``prompt_text`` (query + optional prior knowledge + answer instruction, from
:func:`medloc_core.prompts.build_prompt_text`), ``input_width, input_height`` (the image size after
Qwen2.5-VL's ``smart_resize``) and ``in_x1, in_y1, in_x2, in_y2`` (the ground-truth box in that input frame,
pixels, continuous). ``x1..y2`` stay in original pixels. ``split`` is filled for every record.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medloc_core import masking
from medloc_core.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, Frame
from medloc_core.data.records import PREPARED_COLUMNS, RECORD_COLUMNS, SPLITS
from medloc_core.data.templates import default_query, prior_knowledge_for
from medloc_core.prompts import ANSWER_STYLES, build_prompt_text


def _assign_free_groups(
    sizes: dict[str, int], rng: np.random.Generator, fractions: Sequence[float]
) -> dict[str, str]:
    """Assign whole groups to splits so that record counts approach ``fractions``.

    Groups are visited in a seeded random order; each goes to the split with the largest remaining deficit.
    Afterwards every split with a positive fraction gets at least one group when there are enough groups.
    """
    keys = sorted(sizes)
    order = [keys[i] for i in rng.permutation(len(keys))]
    total = sum(sizes.values())
    targets = [f * total for f in fractions]
    counts = [0.0] * len(SPLITS)
    members: dict[str, list[str]] = {s: [] for s in SPLITS}
    for key in order:
        best = max(range(len(SPLITS)), key=lambda i: (targets[i] - counts[i], -i))
        counts[best] += sizes[key]
        members[SPLITS[best]].append(key)
    for i, split in enumerate(SPLITS):
        if fractions[i] > 0 and not members[split]:
            donor = max(SPLITS, key=lambda s: len(members[s]))
            if len(members[donor]) > 1:
                moved = min(members[donor], key=lambda k: (sizes[k], k))
                members[donor].remove(moved)
                members[split].append(moved)
    return {key: split for split, keys_ in members.items() for key in keys_}


def assign_splits(
    records: pd.DataFrame,
    *,
    seed: int,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    honour_existing_splits: bool = True,
) -> pd.Series:
    """A train/val/test split per record, by group (``dataset`` + ``group_id``), seeded, per dataset.

    With ``honour_existing_splits`` official splits/folds already in ``split`` are kept, and unassigned
    records of a group that already has a split join that split (the group's most common one). Groups with no
    split at all are divided by ``split_fractions`` (train, val, test), counted in records.
    """
    check_options(split_fractions=split_fractions)
    fractions = [float(f) for f in split_fractions]
    group = records["dataset"].astype(str) + "\x1f" + records["group_id"].astype(str)
    current = records["split"].astype(str) if honour_existing_splits else pd.Series("", index=records.index)
    bad = sorted(set(current) - {"", *SPLITS})
    if bad:
        raise ValueError(f"records have unknown split values {bad}; expected {SPLITS} or ''")
    out = current.copy()
    known = current != ""
    group_split = {g: Counter(s).most_common(1)[0][0] for g, s in current[known].groupby(group[known])}
    inherit = ~known & group.isin(group_split)
    out[inherit] = group[inherit].map(group_split)
    free = out == ""
    for dataset in sorted(records.loc[free, "dataset"].astype(str).unique()):
        mask = free & (records["dataset"].astype(str) == dataset)
        sizes = group[mask].value_counts().to_dict()
        seed_words = [int(seed), *hashlib.sha256(dataset.encode()).digest()[:4]]
        mapping = _assign_free_groups(sizes, np.random.default_rng(seed_words), fractions)
        out[mask] = group[mask].map(mapping)
    return out


def _image_hash(path: str, meta: str) -> str | None:
    try:
        digest = json.loads(meta).get("sha256")
    except ValueError:
        digest = None
    if digest:
        return digest
    try:
        return hashlib.sha256(Path(masking.reveal(path)).read_bytes()).hexdigest()
    except OSError:
        return None


def check_options(
    *,
    split_fractions: Sequence[float] | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    answer_style: str | None = None,
    **_: Any,
) -> None:
    """Refuse settings :func:`preprocess` cannot run with, naming the setting (``ValueError``): three split
    fractions that are >= 0 and sum to 1, a known answer style, ``0 < min_pixels <= max_pixels`` (areas in
    px²). Run on the config at parse time and again by :func:`preprocess` itself."""
    if split_fractions is not None:
        fractions = [float(f) for f in split_fractions]
        if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
            raise ValueError(
                f"split_fractions: must be three non-negative numbers (train, val, test) summing to 1, "
                f"got {list(split_fractions)}"
            )
    if answer_style is not None and answer_style not in ANSWER_STYLES:
        raise ValueError(f"answer_style: must be one of {ANSWER_STYLES}, got {answer_style!r}")
    if min_pixels is not None and min_pixels <= 0:
        raise ValueError(f"min_pixels: must be > 0, got {min_pixels}")
    if min_pixels is not None and max_pixels is not None and max_pixels < min_pixels:
        raise ValueError(f"max_pixels: {max_pixels} is below min_pixels ({min_pixels})")


def preprocess(
    records: pd.DataFrame,
    *,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    honour_existing_splits: bool = True,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
    answer_style: str = "think",
    prior_knowledge: bool | dict[str, str] = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Split, prompt and frame a records table. Returns ``(prepared_df, manifest)``.

    ``prepared_df`` has :data:`PREPARED_COLUMNS`; ``manifest`` holds the record ids per split, the seed and
    options, the images' sha256 hashes, reader options found in ``meta`` and counts.
    """
    check_options(
        split_fractions=split_fractions,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        answer_style=answer_style,
    )
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}")
    if records["record_id"].duplicated().any():
        dupes = records.loc[records["record_id"].duplicated(), "record_id"].head(5).tolist()
        raise ValueError(f"records have duplicate record_id values, e.g. {dupes}")
    df = records.loc[:, list(RECORD_COLUMNS)].copy().reset_index(drop=True)
    df["split"] = assign_splits(
        df, seed=seed, split_fractions=split_fractions, honour_existing_splits=honour_existing_splits
    )
    queries = [
        q if str(q).strip() else default_query(d, lab)
        for q, d, lab in zip(df["query"], df["dataset"], df["label"])
    ]
    df["query"] = queries
    df["prompt_text"] = [
        build_prompt_text(
            q, prior_knowledge=prior_knowledge_for(d, prior_knowledge), answer_style=answer_style
        )
        for q, d in zip(df["query"], df["dataset"])
    ]
    in_w, in_h, in_boxes = [], [], []
    frames: dict[tuple[int, int], Frame] = {}
    for w, h, box in zip(
        df["image_width"], df["image_height"], df[["x1", "y1", "x2", "y2"]].itertuples(index=False)
    ):
        frame = frames.get((w, h))
        if frame is None:
            frame = frames[(w, h)] = Frame.for_qwen(
                int(w), int(h), min_pixels=min_pixels, max_pixels=max_pixels
            )
        in_w.append(frame.input_w)
        in_h.append(frame.input_h)
        in_boxes.append(frame.to_input(tuple(box)))
    df["input_width"] = pd.Series(in_w, dtype="int64")
    df["input_height"] = pd.Series(in_h, dtype="int64")
    box_array = np.asarray(in_boxes, dtype=np.float64).reshape(-1, 4)
    for i, name in enumerate(("in_x1", "in_y1", "in_x2", "in_y2")):
        df[name] = box_array[:, i]

    group = df["dataset"] + "\x1f" + df["group_id"]
    leaking = int((df.groupby(group)["split"].nunique() > 1).sum())
    hashes = {p: _image_hash(p, m) for p, m in zip(df["image_path"], df["meta"]) if p}
    reader_options: dict[str, set[str]] = {}
    for dataset, meta in zip(df["dataset"], df["meta"]):
        try:
            parsed = json.loads(meta)
        except ValueError:
            continue
        for key in ("mask_mode", "fold", "min_component_px"):
            if key in parsed:
                reader_options.setdefault(f"{dataset}.{key}", set()).add(json.dumps(parsed[key]))
    manifest: dict[str, Any] = {
        "seed": seed,
        "split_fractions": list(split_fractions),
        "honour_existing_splits": honour_existing_splits,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "answer_style": answer_style,
        "prior_knowledge": prior_knowledge,
        "splits": {s: df.loc[df["split"] == s, "record_id"].tolist() for s in SPLITS},
        "counts": {
            "records": len(df),
            "groups": int(group.nunique()),
            "groups_in_more_than_one_split": leaking,
            "by_split": {s: int((df["split"] == s).sum()) for s in SPLITS},
            "by_dataset": {
                d: {s: int(((df["dataset"] == d) & (df["split"] == s)).sum()) for s in SPLITS}
                for d in sorted(df["dataset"].unique())
            },
        },
        "reader_options": {
            key: [json.loads(v) for v in sorted(vals)] if len(vals) > 1 else json.loads(next(iter(vals)))
            for key, vals in sorted(reader_options.items())
        },
        "source_hashes": dict(sorted(hashes.items())),
    }
    return df.loc[:, list(PREPARED_COLUMNS)], manifest
