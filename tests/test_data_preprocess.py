"""Preprocessing: group splits without leakage, official splits honoured, prompts, model-input frame, manifest."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medloc_core.boxes import Frame, smart_resize
from medloc_core.data.preprocess import assign_splits, preprocess
from medloc_core.data.records import PREPARED_COLUMNS, records_frame
from medloc_core.data.templates import PRIOR_KNOWLEDGE


def make_records(n_groups=40, per_group=(1, 2, 3), dataset="ham10000", split="", seed=0, w=600, h=450):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for k in range(int(rng.choice(per_group))):
            rows.append(
                {
                    "record_id": f"{dataset}_{g}_{k}",
                    "dataset": dataset,
                    "image_path": f"/nonexistent/{dataset}_{g}_{k}.jpg",
                    "query": "",
                    "x1": 60.0,
                    "y1": 45.0,
                    "x2": 300.0,
                    "y2": 225.0,
                    "image_width": w,
                    "image_height": h,
                    "group_id": f"G{g}",
                    "split": split,
                    "label": "skin lesion",
                    "meta": json.dumps({"sha256": f"{g:064d}", "mask_mode": "union"}),
                }
            )
    return records_frame(rows)


def test_split_has_no_group_leakage_and_roughly_follows_fractions():
    records = make_records(200)
    splits = assign_splits(records, seed=3)
    per_group = splits.groupby(records["group_id"]).nunique()
    assert (per_group == 1).all()
    share = splits.value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.8, abs=0.03) and share["val"] == pytest.approx(0.1, abs=0.03)
    assert splits.equals(assign_splits(records, seed=3))
    assert not splits.equals(assign_splits(records, seed=4))


def test_small_sets_still_get_every_split():
    splits = assign_splits(make_records(4, per_group=(1,)), seed=0)
    assert set(splits) == {"train", "val", "test"}


def test_official_splits_are_honoured_and_group_members_inherit():
    records = pd.concat(
        [make_records(10, dataset="tn3k", split="test"), make_records(30, dataset="tn3k", seed=1)]
    )
    records["record_id"] = [f"r{i}" for i in range(len(records))]
    records.loc[records.index[-1], "group_id"] = "G0"  # an unassigned member of an official test group
    records = records.reset_index(drop=True)
    splits = assign_splits(records, seed=0)
    assert (splits[records["split"] == "test"] == "test").all()
    assert splits.iloc[-1] == "test"
    resplit = assign_splits(records, seed=0, honour_existing_splits=False)
    assert (
        set(resplit) == {"train", "val", "test"}
        and (resplit.groupby(records["group_id"]).nunique() == 1).all()
    )
    with pytest.raises(ValueError, match="split_fractions"):
        assign_splits(records, seed=0, split_fractions=(0.5, 0.5, 0.5))


def test_prepared_columns_frame_and_prompts():
    records = make_records(10, w=600, h=450)
    prepared, manifest = preprocess(records, seed=0, prior_knowledge=True, max_pixels=200_000)
    assert list(prepared.columns) == list(PREPARED_COLUMNS)
    new_h, new_w = smart_resize(450, 600, max_pixels=200_000)
    assert set(prepared.input_width) == {new_w} and set(prepared.input_height) == {new_h}
    expected = Frame(600, 450, new_w, new_h).to_input((60.0, 45.0, 300.0, 225.0))
    row = prepared.iloc[0]
    assert (row.in_x1, row.in_y1, row.in_x2, row.in_y2) == pytest.approx(expected)
    assert (row.x1, row.y2) == (60.0, 225.0)  # original frame kept
    assert row.query == "Locate the skin lesion in this dermoscopy image."
    assert PRIOR_KNOWLEDGE["ham10000"][:40] in row.prompt_text and "<think>" in row.prompt_text
    plain, _ = preprocess(records, seed=0, answer_style="answer")
    assert "Background:" not in plain.iloc[0].prompt_text and "<think>" not in plain.iloc[0].prompt_text
    custom, _ = preprocess(records, seed=0, prior_knowledge={"ham10000": "Lesions are brown."})
    assert custom.iloc[0].prompt_text.startswith("Background: Lesions are brown.")


def test_manifest_lists_ids_per_split_hashes_and_options():
    records = make_records(12)
    prepared, manifest = preprocess(records, seed=7)
    ids = manifest["splits"]
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == sorted(records.record_id)
    assert manifest["seed"] == 7 and manifest["counts"]["groups_in_more_than_one_split"] == 0
    assert manifest["source_hashes"]["/nonexistent/ham10000_0_0.jpg"] == f"{0:064d}"
    assert manifest["reader_options"] == {"ham10000.mask_mode": "union"}
    assert manifest["counts"]["by_split"]["train"] == len(ids["train"])
    dup = pd.concat([records, records.iloc[:1]])
    with pytest.raises(ValueError, match="duplicate record_id"):
        preprocess(dup, seed=0)
