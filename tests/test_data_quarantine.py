"""Bad input is quarantined with file/row/field/reason, never dropped: records + quarantined == input rows."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medloc_core.cli import main
from medloc_core.data.ingest import ingest, read_dataset
from medloc_core.data.records import QUARANTINE_COLUMNS, QuarantineLimitExceeded


def rgb(path: Path, w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
    return path


def mask(path: Path, rect=(5, 5, 25, 20), w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m[rect[1] : rect[3], rect[0] : rect[2]] = 255
    Image.fromarray(m, "L").save(path)
    return path


def read(fmt, root, **kw):
    return read_dataset(fmt, root, workers=1, progress=False, max_quarantine_fraction=None, **kw)


def assert_conserved(result, input_rows: int) -> None:
    c = result.manifest["counts"]
    assert c["input_rows"] == input_rows
    assert c["source_rows_in_records"] + c["quarantined"] == input_rows
    assert len(result.records) + len(result.quarantine) == input_rows  # no mask mode "each" here
    assert list(result.quarantine.columns) == list(QUARANTINE_COLUMNS)
    assert result.records["record_id"].is_unique


def by_row(result) -> dict[tuple[str, int], tuple[str, str]]:
    return {(Path(q.source_file).name, q.row): (q.field, q.reason) for q in result.quarantine.itertuples()}


def make_bad_ham(root: Path) -> int:
    """A HAM10000 folder with every bad-input case; returns the number of input rows."""
    images, seg = root / "HAM10000_images_part_1", root / "HAM10000_segmentations_lesion_tschandl"
    rows = []
    for i in range(3):  # good
        rgb(images / f"ISIC_000000{i}.jpg")
        mask(seg / f"ISIC_000000{i}_segmentation.png")
        rows.append(f"HAM_{i},ISIC_000000{i},nv,histo,40.0,male,back")
    images.mkdir(parents=True, exist_ok=True)
    (images / "ISIC_0000010.jpg").write_bytes(b"this is not a jpeg")  # corrupt
    mask(seg / "ISIC_0000010_segmentation.png")
    good = rgb(images / "ISIC_0000011.jpg", 400, 300)  # truncated
    good.write_bytes(good.read_bytes()[:300])
    mask(seg / "ISIC_0000011_segmentation.png", w=400, h=300)
    rgb(images / "ISIC_0000012.jpg")  # mask missing
    rgb(images / "ISIC_0000013.jpg")  # empty mask
    Image.fromarray(np.zeros((30, 40), np.uint8), "L").save(seg / "ISIC_0000013_segmentation.png")
    rgb(images / "ISIC_0000014.jpg")  # only a 20 px speck
    mask(seg / "ISIC_0000014_segmentation.png", (1, 1, 6, 5))
    rgb(images / "ISIC_0000015.jpg")  # mask of another size
    mask(seg / "ISIC_0000015_segmentation.png", w=20, h=20)
    rgb(images / "ISIC_0000016.jpg")  # unknown diagnosis
    mask(seg / "ISIC_0000016_segmentation.png")
    rgb(images / "ISIC_0000099.jpg")  # image without a metadata row
    rows += [
        "HAM_10,ISIC_0000010,nv,histo,40.0,male,back",  # line 5
        "HAM_11,ISIC_0000011,nv,histo,40.0,male,back",  # 6
        "HAM_12,ISIC_0000012,nv,histo,40.0,male,back",  # 7
        "HAM_13,ISIC_0000013,nv,histo,40.0,male,back",  # 8
        "HAM_14,ISIC_0000014,nv,histo,40.0,male,back",  # 9
        "HAM_15,ISIC_0000015,nv,histo,40.0,male,back",  # 10
        "HAM_16,ISIC_0000016,melanoma?,histo,40.0,male,back",  # 11 unknown label
        "HAM_0,ISIC_0000000,nv,histo,40.0,male,back",  # 12 duplicate id
        "HAM_17,ISIC_0000017,nv,histo,40.0,male,back,extra",  # 13 malformed
        "HAM_18,ISIC_0000018,nv,histo,40.0,male,back",  # 14 image missing
        "",  # blank line: not an item
    ]
    (root / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n" + "\n".join(rows) + "\n"
    )
    return 13 + 1  # 13 non-blank data rows (lines 2-14) + 1 image without a row


def test_every_bad_case_in_a_ham10000_folder(tmp_path):
    n_in = make_bad_ham(tmp_path)
    result = read("ham10000", tmp_path)
    assert_conserved(result, n_in)
    assert sorted(result.records.record_id) == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    q = by_row(result)
    meta = "HAM10000_metadata.csv"
    assert q[(meta, 5)][0] == "image_path" and "corrupt" in q[(meta, 5)][1]
    assert q[(meta, 6)][0] == "image_path" and "truncated" in q[(meta, 6)][1].lower()
    assert q[(meta, 7)] == ("mask_path", q[(meta, 7)][1]) and "missing mask" in q[(meta, 7)][1]
    assert q[(meta, 8)][0] == "mask_path" and "empty mask" in q[(meta, 8)][1]
    assert q[(meta, 9)][0] == "mask_path" and "empty mask" in q[(meta, 9)][1]
    assert q[(meta, 10)][0] == "mask_path" and "20x20" in q[(meta, 10)][1]
    assert q[(meta, 11)][0] == "dx" and "unknown label" in q[(meta, 11)][1]
    assert q[(meta, 12)][0] == "record_id" and "duplicate" in q[(meta, 12)][1] and "row 2" in q[(meta, 12)][1]
    assert q[(meta, 13)][0] == "row" and "malformed" in q[(meta, 13)][1]
    assert q[(meta, 14)][0] == "image_id" and "no image file" in q[(meta, 14)][1]
    assert q[("ISIC_0000099.jpg", 0)][0] == "image_id"
    assert result.manifest["counts"]["quarantined"] == 11


def test_box_formats_bad_cases(tmp_path):
    rgb(tmp_path / "images" / "a.png", 50, 40)
    ann = lambda i, box, cat=1, img=1: {"id": i, "image_id": img, "category_id": cat, "bbox": box}  # noqa: E731
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png"},
            {"id": 2, "file_name": "a.png"},
            {"id": 3, "file_name": "gone.png"},
        ],
        "annotations": [
            ann(1, [1, 1, 10, 10]),  # good
            ann(2, [45, 30, 20, 20]),  # outside the 50x40 image
            ann(3, [5, 5, 0, 10]),  # degenerate
            ann(4, [5, 5, 10, 10], cat=9),  # unknown label
            ann(5, [5, 5, 10, 10], img=77),  # unknown image
            "not an annotation",
            ann(7, [1, 2, 3]),  # malformed bbox
            ann(8, [0, 0, 50.5, 40]),  # 0.5 px overshoot: clipped, kept
            ann(9, [1, 1, 5, 5], img=3),  # image file missing
        ],
        "categories": [{"id": 1, "name": "calcaneus"}],
    }
    (tmp_path / "ann_train.json").write_text(json.dumps(coco))
    (tmp_path / "broken.json").write_text("{not json")
    result = read("coco", tmp_path)
    assert_conserved(result, 9 + 1 + 1)  # annotations + image 2 without annotation + broken file
    assert sorted(result.records.record_id) == ["ann_train_1", "ann_train_8"]
    clipped = result.records.set_index("record_id").loc["ann_train_8"]
    assert clipped.x2 == 50.0 and json.loads(clipped.meta)["clipped_from"][2] == 50.5
    q = by_row(result)
    assert q[("ann_train.json", 2)][0] == "bbox" and "outside" in q[("ann_train.json", 2)][1]
    assert q[("ann_train.json", 3)][0] == "bbox" and "degenerate" in q[("ann_train.json", 3)][1]
    assert q[("ann_train.json", 4)][0] == "category_id" and "unknown label" in q[("ann_train.json", 4)][1]
    assert q[("ann_train.json", 5)][0] == "image_id"
    assert q[("ann_train.json", 6)][0] == "annotation"
    assert q[("ann_train.json", 7)][0] == "bbox"
    assert q[("ann_train.json", 9)][0] == "file_name"
    assert q[("broken.json", 0)][0] == "json"


def test_voc_yolo_csv_jsonl_bad_cases(tmp_path):
    voc = tmp_path / "voc"
    rgb(voc / "JPEGImages" / "a.jpg")
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename>"
        "<object><name>x</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>x</name></object>"
        "<object><name>x</name><bndbox><xmin>a</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>y</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    (voc / "Annotations" / "b.xml").write_text("<annotation><object></annotation>")
    result = read("voc", voc, labels=["x"])
    assert_conserved(result, 4 + 1)
    q = by_row(result)
    assert q[("a.xml", 2)][0] == "bndbox" and q[("a.xml", 3)][0] == "bndbox"
    assert q[("a.xml", 4)][0] == "name" and "unknown label" in q[("a.xml", 4)][1]
    assert q[("b.xml", 0)][0] == "xml"

    yolo = tmp_path / "yolo"
    rgb(yolo / "images" / "a.jpg")
    rgb(yolo / "images" / "nolabel.jpg")
    rgb(yolo / "images" / "empty.jpg")
    (yolo / "labels").mkdir()
    (yolo / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n0 0.5 zero 0.2 0.2\n0 0.5\n0 1.2 0.5 0.5 0.5\n"
    )
    (yolo / "labels" / "empty.txt").write_text("\n")
    (yolo / "classes.txt").write_text("heel\n")
    result = read("yolo", yolo)
    assert_conserved(result, 5 + 2)
    q = by_row(result)
    assert q[("a.txt", 2)][0] == "class" and q[("a.txt", 3)][0] == "line" and q[("a.txt", 4)][0] == "line"
    assert q[("a.txt", 5)][0] == "bbox" and "outside" in q[("a.txt", 5)][1]
    assert q[("nolabel.jpg", 0)][0] == "label_file" and q[("empty.txt", 0)][0] == "label_file"

    rgb(tmp_path / "c" / "a.jpg")
    (tmp_path / "c" / "b.csv").write_text(
        "id,image,x1,y1,x2,y2\n"
        "r1,a.jpg,1,1,10,10\n"
        "r2,a.jpg,1,1,10\n"  # 3: malformed
        "r3,a.jpg,1,one,10,10\n"  # 4: not a number
        "r4,missing.jpg,1,1,10,10\n"  # 5: image missing
        "r1,a.jpg,2,2,10,10\n"  # 6: duplicate id
        "r6,a.jpg,10,1,5,10\n"  # 7: x2 < x1
    )
    result = read("csv", tmp_path / "c")
    assert_conserved(result, 6)
    q = by_row(result)
    assert [q[("b.csv", r)][0] for r in range(3, 8)] == ["row", "y1", "image", "record_id", "bbox"]

    (tmp_path / "c" / "g.jsonl").write_text(
        '{"image": "a.jpg", "bbox": [1, 1, 9, 9]}\n{"image": "a.jpg", "bbox": \n[1,2]\n{"image": "a.jpg", "problem": "q"}\n'
    )
    result = read("jsonl", tmp_path / "c" / "g.jsonl")
    assert_conserved(result, 4)
    q = by_row(result)
    assert [q[("g.jsonl", r)][0] for r in (2, 3)] == ["json", "json"] and q[("g.jsonl", 4)][0] == "bbox"


def test_limit_raises_with_counts_and_report_path_and_cli_exits_nonzero(tmp_path, capsys):
    n_in = make_bad_ham(tmp_path / "ham")
    with pytest.raises(QuarantineLimitExceeded) as info:
        ingest("ham10000", tmp_path / "ham", tmp_path / "out", workers=1, progress=False)
    message = str(info.value)
    report = tmp_path / "out" / "quarantine.csv"
    assert f"11 of {n_in} input rows" in message and str(report) in message
    assert len(pd.read_csv(report)) == 11 and (tmp_path / "out" / "records.parquet").exists()
    ok = ingest(
        "ham10000",
        tmp_path / "ham",
        tmp_path / "out2",
        workers=1,
        progress=False,
        max_quarantine_fraction=0.9,
    )
    assert len(ok.records) == 3
    code = main(
        [
            "data",
            "ingest",
            "--format",
            "ham10000",
            "--root",
            str(tmp_path / "ham"),
            "--out",
            str(tmp_path / "o3"),
            "--no-progress",
        ]
    )
    assert code != 0
    assert "quarantine limit exceeded" in capsys.readouterr().err


ROW_KINDS = ("good", "outside", "degenerate", "nan", "short", "word", "missing_image", "dup", "bad_split")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from(ROW_KINDS), st.integers(0, 30), st.integers(1, 25)), min_size=1, max_size=25
    )
)
def test_property_records_plus_quarantined_equals_input_rows(rows):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rgb(root / "a.png", 40, 30)
        lines = ["id,image,x1,y1,x2,y2,split"]
        for i, (kind, x, w) in enumerate(rows):
            rid, image, box, split = f"r{i}", "a.png", [x, 2, x + w, 20], "train"
            if kind == "outside":
                box = [x, 2, 60 + w, 20]
            elif kind == "degenerate":
                box = [x, 5, x + w, 5]
            elif kind == "nan":
                box = [x, "nan", x + w, 20]
            elif kind == "dup":
                rid = "r0"
            elif kind == "missing_image":
                image = "zz.png"
            elif kind == "bad_split":
                split = "holdout"
            cells = [rid, image, *map(str, box), split]
            if kind == "short":
                cells = cells[:-2]
            elif kind == "word":
                cells[2] = "left"
            lines.append(",".join(cells))
        (root / "boxes.csv").write_text("\n".join(lines) + "\n")
        result = read("csv", root / "boxes.csv")
        assert len(result.records) + len(result.quarantine) == len(rows)
        # what should survive: scan-level failures first, then first-come record ids, then the box check
        seen, expected = set(), set()
        for i, (kind, x, w) in enumerate(rows):
            if kind in ("short", "word", "missing_image", "bad_split"):
                continue
            rid = "r0" if kind == "dup" else f"r{i}"
            if rid in seen:
                continue
            seen.add(rid)
            if kind in ("good", "dup") and x + w <= 41:  # <= 1 px overshoot of the 40 px width is clipped
                expected.add(rid)
        assert set(result.records.record_id) == expected
