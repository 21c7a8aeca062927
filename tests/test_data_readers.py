"""Each reader on a small folder in its real layout, with boxes checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import mask
from PIL import Image

from medloc_core.data.ingest import read_dataset
from medloc_core.data.masks import mask_boxes
from medloc_core.data.records import RECORD_COLUMNS


def rgb(path: Path, w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)
    return path


def read(fmt, root, **kw):
    return read_dataset(fmt, root, workers=1, progress=False, **kw)


def boxes(result):
    return {r.record_id: (r.x1, r.y1, r.x2, r.y2) for r in result.records.itertuples()}


def test_mask_box_is_exclusive_extent_and_ignores_specks():
    m = np.zeros((30, 40), np.uint8)
    m[5:15, 10:22] = 255  # 120 px
    m[25:27, 30:33] = 255  # 6 px speck
    m[20:29, 0:8] = 200  # 72 px second component
    assert mask_boxes(m, "union") == ([(0.0, 5.0, 22.0, 29.0)], 2)
    assert mask_boxes(m, "largest") == ([(10.0, 5.0, 22.0, 15.0)], 2)
    assert mask_boxes(m, "each")[0] == [(10.0, 5.0, 22.0, 15.0), (0.0, 20.0, 8.0, 29.0)]
    m[m == 200] = 100  # below the > 127 threshold
    assert mask_boxes(m, "union") == ([(10.0, 5.0, 22.0, 15.0)], 1)
    with pytest.raises(ValueError):
        mask_boxes(m, "biggest")


def test_ham10000_dataverse_layout_tab_metadata_without_extension(tmp_path):
    rgb(tmp_path / "HAM10000_images_part1" / "ISIC_0000001.jpg")
    rgb(tmp_path / "HAM10000_images_part2" / "ISIC_0000002.jpg")
    seg = tmp_path / "HAM10000_segmentations_lesion_tschandl"
    mask(seg / "ISIC_0000001_segmentation.png", (3, 4, 20, 25))
    mask(seg / "ISIC_0000002_segmentation.png", (0, 0, 40, 30))
    (tmp_path / "HAM10000_metadata").write_text(
        "lesion_id\timage_id\tdx\tdx_type\tage\tsex\tlocalization\tdataset\n"
        "HAM_1\tISIC_0000001\tmel\thisto\t50.0\tmale\tback\tvidir_modern\n"
        "HAM_1\tISIC_0000002\tmel\thisto\t50.0\tmale\tback\tvidir_modern\n"
    )
    result = read("ham10000", tmp_path)
    assert list(result.records.columns) == list(RECORD_COLUMNS)
    assert boxes(result) == {"ISIC_0000001": (3, 4, 20, 25), "ISIC_0000002": (0, 0, 40, 30)}
    rec = result.records.iloc[0]
    assert (rec.dataset, rec.group_id, rec.label, rec.split) == ("ham10000", "HAM_1", "skin lesion", "")
    assert Path(rec.image_path).is_absolute()
    meta = json.loads(rec.meta)
    assert (
        meta["dx"] == "mel"
        and meta["mask_mode"] == "union"
        and meta["row"] == 2
        and len(meta["sha256"]) == 64
    )


def test_isic2018_splits_and_case_insensitive_suffix(tmp_path):
    rgb(tmp_path / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg")
    (tmp_path / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("cc")
    mask(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png", (1, 2, 11, 12))
    rgb(tmp_path / "ISIC2018_Task1-2_Validation_Input" / "ISIC_0000009.jpg")
    mask(tmp_path / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0000009_Segmentation.png", (5, 5, 25, 15))
    result = read("isic2018", tmp_path)
    assert boxes(result) == {"train_ISIC_0000000": (1, 2, 11, 12), "val_ISIC_0000009": (5, 5, 25, 15)}
    assert dict(zip(result.records.record_id, result.records.split)) == {
        "train_ISIC_0000000": "train",
        "val_ISIC_0000009": "val",
    }


def test_tn3k_fold_indices_follow_numeric_order(tmp_path):
    root = tmp_path / "tn3k"
    for name in ("2", "10", "1"):  # lexical order would be 1, 10, 2
        rgb(root / "trainval-image" / f"{name}.jpg")
        mask(root / "trainval-mask" / f"{name}.jpg", (2, 2, 20, 20), fmt="JPEG")
    rgb(root / "test-image" / "0.jpg")
    mask(root / "test-mask" / "0.jpg", (4, 6, 30, 26), fmt="JPEG")
    (root / "tn3k-trainval-fold0.json").write_text(json.dumps({"train": [0, 2], "val": [1]}))
    result = read("tn3k", tmp_path)
    split = dict(zip(result.records.record_id, result.records.split))
    assert split == {"trainval_1": "train", "trainval_2": "val", "trainval_10": "train", "test_0": "test"}
    assert boxes(result)["test_0"] == (4, 6, 30, 26)


def test_coco_voc_yolo(tmp_path):
    coco = tmp_path / "coco"
    rgb(coco / "images" / "a.png", 50, 40)
    (coco / "annotations").mkdir()
    (coco / "annotations" / "instances_val2017.json").write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "a.png", "width": 50, "height": 40}],
                "annotations": [{"id": 3, "image_id": 7, "category_id": 1, "bbox": [2.5, 4, 10, 20]}],
                "categories": [{"id": 1, "name": "calcaneus"}],
            }
        )
    )
    result = read("coco", coco)
    assert boxes(result) == {"instances_val2017_3": (2.5, 4, 12.5, 24)}
    assert result.records.iloc[0].split == "val" and result.records.iloc[0].label == "calcaneus"

    voc = tmp_path / "voc"
    rgb(voc / "JPEGImages" / "x.jpg", 50, 40)
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / "x.xml").write_text(
        "<annotation><filename>x.jpg</filename><object><name>spur</name>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    assert boxes(read("voc", voc)) == {"x_1": (0, 1, 50, 40)}

    yolo = tmp_path / "yolo"
    rgb(yolo / "images" / "train" / "p.jpg", 100, 50)
    (yolo / "labels" / "train").mkdir(parents=True)
    (yolo / "labels" / "train" / "p.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.3 0.1 0.3 0.3\n")
    (yolo / "data.yaml").write_text("names: [heel, spur]\n")
    result = read("yolo", yolo)
    assert boxes(result) == {"train/p:1": (40, 15, 60, 35), "train/p:3": (10, 5, 30, 15)}
    assert list(result.records.label) == ["spur", "heel"] and set(result.records.split) == {"train"}


def test_csv_jsonl_and_mask_folders(tmp_path):
    rgb(tmp_path / "imgs" / "a.jpg", 60, 40)
    (tmp_path / "boxes.csv").write_text("image,x1,y1,x2,y2,label,split\nimgs/a.jpg,1,2,30,40,heel,test\n")
    result = read("csv", tmp_path / "boxes.csv")
    assert boxes(result) == {"boxes_2": (1, 2, 30, 40)} and result.records.iloc[0].split == "test"

    lines = [
        {
            "id": "r1",
            "image": "imgs/a.jpg",
            "problem": "find the heel",
            "solution": "<answer>[1, 2, 3, 4]</answer>",
        },
        {"image": ["a.jpg"], "query": "q", "bbox": [0.1, 0.1, 0.5, 0.5]},
        {
            "id": "r3",
            "image": "imgs/a.jpg",
            "conversations": [
                {"from": "human", "value": "<image>Where is it?"},
                {"from": "gpt", "value": "[5,6,7,8]"},
            ],
        },
    ]
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = read("jsonl", tmp_path / "g.jsonl", dataset="heel", max_quarantine_fraction=None)
    assert boxes(result) == {"r1": (1, 2, 3, 4), "r3": (5, 6, 7, 8)}
    assert list(result.records["query"]) == ["find the heel", "Where is it?"]
    assert result.quarantine.iloc[0].tolist()[1:3] == [2, "bbox"]  # 0.4 px wide in pixel units: degenerate
    assert "degenerate" in result.quarantine.iloc[0].reason
    normed = read("jsonl", tmp_path / "g.jsonl", coords="norm1", max_quarantine_fraction=None)
    assert boxes(normed)["g_2"] == pytest.approx((6, 4, 30, 20))
    assert normed.records.set_index("record_id").loc["g_2", "query"] == "q"

    masks = tmp_path / "m"
    rgb(masks / "images" / "val" / "c.png")
    mask(masks / "masks" / "val" / "c_mask.png", (7, 8, 9 + 10, 8 + 10))
    result = read("masks", masks, label="spur")
    assert boxes(result) == {"val/c": (7, 8, 19, 18)} and result.records.iloc[0].split == "val"
