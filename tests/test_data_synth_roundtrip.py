"""synth -> ingest round-trips the generated boxes exactly, in each real layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medloc_core.data.ingest import read_dataset
from medloc_core.data.synth import TRUTH_FILE, generate, image_size
from medloc_core.data.synth_render import Difficulty, render_dermoscopy


def _boxes(records):
    return {r.record_id: [r.x1, r.y1, r.x2, r.y2] for r in records.itertuples()}


@pytest.mark.parametrize(("kind", "fmt"), [("ham10000", "ham10000"), ("tn3k", "tn3k"), ("xray", "coco")])
def test_synth_then_ingest_round_trips_boxes_exactly(tmp_path, kind, fmt):
    truth = generate(kind, tmp_path, n=10, seed=3, size=160, progress=False)
    result = read_dataset(fmt, tmp_path, workers=1, progress=False)
    assert len(result.quarantine) == 0, result.quarantine.to_dict("records")
    assert _boxes(result.records) == truth["boxes"]
    assert len(truth["boxes"]) == 10
    width, height = image_size(kind, 160)
    assert set(result.records["image_width"]) == {width} and set(result.records["image_height"]) == {height}
    assert json.loads((tmp_path / TRUTH_FILE).read_text())["boxes"] == truth["boxes"]


def test_ham10000_layout_has_several_images_per_lesion(tmp_path):
    generate("ham10000", tmp_path, n=30, seed=0, size=96, progress=False)
    assert (tmp_path / "HAM10000_images_part_1").is_dir() and (tmp_path / "HAM10000_images_part_2").is_dir()
    header = (tmp_path / "HAM10000_metadata.csv").read_text().splitlines()[0]
    assert header == "lesion_id,image_id,dx,dx_type,age,sex,localization"
    records = read_dataset("ham10000", tmp_path, workers=1, progress=False).records
    per_lesion = records.groupby("group_id").size()
    assert per_lesion.max() >= 2 and len(per_lesion) < 30
    with Image.open(
        tmp_path / "HAM10000_segmentations_lesion_tschandl" / "ISIC_0024306_segmentation.png"
    ) as m:
        assert m.mode == "L" and set(np.unique(np.asarray(m))) == {0, 255}


def test_tn3k_layout_folds_and_jpeg_masks_and_each_mode(tmp_path):
    truth = generate("tn3k", tmp_path, n=40, seed=5, size=128, progress=False)
    root = tmp_path / "tn3k"
    fold = json.loads((root / "tn3k-trainval-fold0.json").read_text())
    assert sorted(fold["train"] + fold["val"]) == list(range(32))
    with Image.open(root / "trainval-mask" / "0000.jpg") as m:
        assert m.format == "JPEG"
    records = read_dataset("tn3k", tmp_path, workers=1, progress=False).records
    split = dict(zip(records.record_id, records.split))
    assert all(split[f"trainval_{i:04d}"] == "val" for i in fold["val"])
    assert all(split[f"test_{i:04d}"] == "test" for i in range(8))
    multi = {rid: comps for rid, comps in truth["components"].items() if len(comps) > 1}
    assert multi, "the generator should produce some two-nodule masks"
    each = read_dataset("tn3k", tmp_path, workers=1, progress=False, mask_mode="each").records
    for rid, comps in multi.items():
        got = each[each.record_id.str.startswith(rid + "_c")].sort_values("record_id")
        assert [[r.x1, r.y1, r.x2, r.y2] for r in got.itertuples()] == comps
        assert json.loads(got.meta.iloc[0])["mask_mode"] == "each"
    largest = _boxes(read_dataset("tn3k", tmp_path, workers=1, progress=False, mask_mode="largest").records)
    for rid, comps in multi.items():
        assert largest[rid] in comps and largest[rid] != truth["boxes"][rid]


def test_generation_is_deterministic_and_seed_dependent(tmp_path):
    a = generate("tn3k", tmp_path / "a", n=4, seed=1, size=96, progress=False)
    b = generate("tn3k", tmp_path / "b", n=4, seed=1, size=96, progress=False)
    c = generate("tn3k", tmp_path / "c", n=4, seed=2, size=96, progress=False)
    assert a["boxes"] == b["boxes"] and a["boxes"] != c["boxes"]
    img = "tn3k/trainval-image/0000.jpg"
    assert (tmp_path / "a" / img).read_bytes() == (tmp_path / "b" / img).read_bytes()


def test_difficulty_knobs_shrink_and_fade_the_target():
    easy_img, easy_mask = render_dermoscopy((0, 1), (0, 2), 200, 150, Difficulty())
    hard_img, hard_mask = render_dermoscopy(
        (0, 1), (0, 2), 200, 150, Difficulty(target_scale=0.4, contrast=0.3, blur=1.0)
    )
    assert hard_mask.sum() < 0.3 * easy_mask.sum()

    def contrast(img, mask):
        grey = img.mean(axis=2)
        return grey[~mask].mean() - grey[mask].mean()

    assert contrast(hard_img, hard_mask) < 0.5 * contrast(easy_img, easy_mask)
    with pytest.raises(ValueError):
        Difficulty(contrast=0)
