"""Bad input, class by class: every input row ends up in records or in the quarantine report (with its file,
row and field), nothing is silently wrong, and paths stay inside the dataset root.

Shared invariant (``assert_accounted``): ``input_rows = source rows in records + quarantined rows``, where a
file that could not be parsed as a whole counts all of its rows.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import assert_accounted, coco_file, read_quiet, solid_image
from PIL import Image

from medloc_core.data.ingest import read_dataset
from medloc_core.data.records import QuarantineLimitExceeded
from medloc_core.images import load_rgb


def reasons(result, field: str | None = None) -> list[str]:
    q = result.quarantine
    return list(q[q["field"] == field]["reason"] if field else q["reason"])


def ann(i: int, image_id=1, category_id=1, bbox=None) -> dict:
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": bbox or [2, 2, 10, 10]}


# ------------------------------------------------------------------------------- every row accounted for


def test_a_truncated_coco_file_counts_all_its_annotations(tmp_path):
    solid_image(tmp_path / "images" / "a.jpg")
    coco_file(tmp_path / "good.json", [{"id": 1, "file_name": "a.jpg"}], [ann(1), ann(2)])
    text = json.dumps(
        {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [ann(i) for i in range(1, 9)]}
    )
    (tmp_path / "bad.json").write_text(text[: len(text) * 2 // 3])  # cut mid-file
    result = read_quiet("coco", tmp_path)
    expected_lost = text[: len(text) * 2 // 3].count('"image_id"')
    assert expected_lost >= 4
    assert_accounted(result, 2 + expected_lost)
    (entry,) = result.quarantine[result.quarantine["field"] == "json"].itertuples()
    assert entry.rows == expected_lost and entry.row == 0 and "bad.json" in entry.source_file
    with pytest.raises(QuarantineLimitExceeded):  # the limit sees the real loss, not 1 row
        read_dataset("coco", tmp_path, workers=1, progress=False, max_quarantine_fraction=0.5)


@pytest.mark.parametrize(
    "header,delimiter",
    [("image,left,top,right,bottom", ","), ("image;x1;y1;x2;y2", ";"), ("image,x1,y1,x1,y2", ",")],
)
def test_csv_header_problems_count_every_row(tmp_path, header, delimiter):
    solid_image(tmp_path / "a.jpg")
    rows = [delimiter.join(["a.jpg", "2", "2", "12", "12"]) for _ in range(5)]
    (tmp_path / "boxes.csv").write_text("\n".join([header, *rows, ""]))
    result = read_quiet("csv", tmp_path)
    assert_accounted(result, 5)
    if delimiter == ";":  # sniffed: a ;-delimited file is read, not lost
        assert len(result.records) == 5
    else:
        assert len(result.records) == 0 and list(result.quarantine["rows"]) == [5]
        assert list(result.quarantine["field"]) == ["header"]
    if header.count("x1") == 2:
        assert "repeats column" in reasons(result)[0]


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"image_id": [1]}, "image_id"),
        ({"category_id": {"id": 1}}, "category_id"),
        ({"bbox": [True, 2, 10, 10]}, "bbox"),
        ({"bbox": ["2", 2, 10, 10]}, "bbox"),
        ({"image_id": None}, "image_id"),
    ],
)
def test_one_bad_coco_value_quarantines_its_annotation_only(tmp_path, bad, field):
    solid_image(tmp_path / "images" / "a.jpg")
    coco_file(tmp_path / "c.json", [{"id": 1, "file_name": "a.jpg"}], [ann(1), {**ann(2), **bad}, ann(3)])
    result = read_quiet("coco", tmp_path)
    assert_accounted(result, 3)
    assert len(result.records) == 2
    (entry,) = result.quarantine.itertuples()
    assert (entry.row, entry.field) == (2, field) and "c.json" in entry.source_file
    assert "\n" not in entry.reason


def test_coco_null_annotations_is_a_file_problem_with_its_image_count(tmp_path):
    solid_image(tmp_path / "images" / "a.jpg")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "a.jpg"}],
                                "annotations": None, "categories": None}))  # fmt: skip
    result = read_quiet("coco", tmp_path)
    assert_accounted(result, 2)
    assert reasons(result, "annotations") and result.quarantine["rows"].tolist() == [2]


@pytest.mark.parametrize("cls", ["nan", "inf", "-inf", "1.5", "-1"])
def test_yolo_bad_class_values_quarantine_the_line(tmp_path, cls):
    solid_image(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{cls} 0.5 0.5 0.2 0.2\n")
    result = read_quiet("yolo", tmp_path)
    assert_accounted(result, 2)
    assert result.quarantine[["row", "field"]].values.tolist() == [[2, "class"]]


def test_yolo_malformed_data_yaml_quarantines_the_label_lines(tmp_path):
    solid_image(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.4 0.4 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text("names: [lesion, {unclosed\n")
    result = read_quiet("yolo", tmp_path)
    assert_accounted(result, 2)
    assert len(result.records) == 0 and all("data.yaml is malformed" in r for r in reasons(result, "class"))


# ---------------------------------------------------------------------------------- nothing silently wrong


def test_no_basename_fallback_for_a_missing_subfolder(tmp_path):
    solid_image(tmp_path / "other" / "a.jpg")
    (tmp_path / "b.csv").write_text("image,x1,y1,x2,y2\nmissing/a.jpg,2,2,12,12\nother/a.jpg,2,2,12,12\n")
    result = read_quiet("csv", tmp_path)
    assert_accounted(result, 2)
    assert len(result.records) == 1 and reasons(result, "image") == ["image file 'missing/a.jpg' not found"]


def test_an_ambiguous_bare_name_is_not_guessed(tmp_path):
    solid_image(tmp_path / "x" / "a.jpg")
    solid_image(tmp_path / "y" / "a.jpg")
    (tmp_path / "b.csv").write_text("image,x1,y1,x2,y2\na.jpg,2,2,12,12\n")
    result = read_quiet("csv", tmp_path)
    assert len(result.records) == 0 and "ambiguous" in reasons(result, "image")[0]


def test_duplicate_coco_image_ids_are_quarantined_not_last_wins(tmp_path):
    solid_image(tmp_path / "images" / "a.jpg")
    solid_image(tmp_path / "images" / "b.jpg")
    images = [
        {"id": 1, "file_name": "a.jpg"},
        {"id": 1, "file_name": "b.jpg"},
        {"id": 2, "file_name": "b.jpg"},
    ]
    coco_file(tmp_path / "c.json", images, [ann(1, image_id=1), ann(2, image_id=2)])
    result = read_quiet("coco", tmp_path)
    # The input rows are the two annotations: an image entry is an item only when no annotation is on it, so
    # the two entries that share id 1 are reported (rows 0) without counting rows that do not exist.
    assert_accounted(result, 2)
    assert len(result.records) == 1
    assert sorted(result.quarantine["field"]) == ["id", "id", "image_id"]
    assert result.quarantine.loc[result.quarantine["field"] == "id", "rows"].tolist() == [0, 0]
    images.append({"id": 3, "file_name": "a.jpg"})
    images.append({"id": 3, "file_name": "b.jpg"})  # a duplicated id nothing refers to: two real items
    coco_file(tmp_path / "c.json", images, [ann(1, image_id=1), ann(2, image_id=2)])
    assert_accounted(read_quiet("coco", tmp_path), 4)


def test_ham10000_same_id_in_both_parts_and_two_masks_are_reported(tmp_path):
    from helpers import mask

    solid_image(tmp_path / "HAM10000_images_part_1" / "ISIC_1.jpg")
    solid_image(tmp_path / "HAM10000_images_part_2" / "ISIC_1.jpg", value=30)
    solid_image(tmp_path / "HAM10000_images_part_2" / "ISIC_2.jpg")
    mask(tmp_path / "seg" / "ISIC_1_segmentation.png", (3, 4, 20, 25))
    mask(tmp_path / "seg" / "ISIC_2_segmentation.png", (3, 4, 20, 25))
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nL1,ISIC_1,nv\nL2,ISIC_2,mel\n")
    result = read_quiet("ham10000", tmp_path)
    # two metadata rows + the second ISIC_1 file (three image files, each accounted for)
    assert_accounted(result, 3)
    assert list(result.records["record_id"]) == ["ISIC_2"]
    assert "several image files" in reasons(result, "image_id")[0]
    mask(tmp_path / "other_seg" / "ISIC_2_segmentation.png", (3, 4, 20, 25))  # now two masks for ISIC_2
    result = read_quiet("ham10000", tmp_path)
    assert_accounted(result, 4)
    assert len(result.records) == 0 and "several masks" in reasons(result, "mask_path")[0]


def test_mask_folder_with_two_masks_for_one_image(tmp_path):
    from helpers import mask

    solid_image(tmp_path / "images" / "a.png")
    mask(tmp_path / "masks" / "a.png", (3, 4, 20, 25))
    mask(tmp_path / "masks" / "a_mask.png", (5, 5, 10, 10))
    result = read_quiet("masks", tmp_path)
    assert_accounted(result, 2)  # the image and the second mask file
    assert len(result.records) == 0 and "several masks" in reasons(result, "mask_path")[0]


def test_csv_invalid_utf8_row_is_quarantined_and_jsonl_bom_keeps_line_one(tmp_path):
    solid_image(tmp_path / "a.jpg")
    (tmp_path / "b.csv").write_bytes(
        b"image,x1,y1,x2,y2,label\na.jpg,2,2,12,12,ok\na.jpg,2,2,12,12,caf\xe9\n"
    )
    result = read_quiet("csv", tmp_path)
    assert_accounted(result, 2)
    assert result.quarantine[["row", "field"]].values.tolist() == [[3, "encoding"]]
    assert "\ufffd" not in "".join(result.records["label"])

    j = tmp_path / "j"
    solid_image(j / "a.jpg")
    line = json.dumps({"image": "a.jpg", "bbox": [2, 2, 12, 12], "query": "q"})
    (j / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + (line + "\n" + line.replace("q", "r") + "\n").encode())
    result = read_quiet("jsonl", j)
    assert_accounted(result, 2)
    assert len(result.records) == 2


@pytest.mark.parametrize("bbox", [[True, 2, 12, 12], ["2", "2", "12", "12"], [2, 2, None, 12]])
def test_boolean_or_non_numeric_box_values_are_refused(tmp_path, bbox):
    solid_image(tmp_path / "a.jpg")
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "a.jpg", "bbox": bbox}) + "\n")
    result = read_quiet("jsonl", tmp_path)
    assert_accounted(result, 1)
    assert len(result.records) == 0 and result.quarantine["field"].tolist() == ["bbox"]


def test_16_bit_images_are_scaled_not_white(tmp_path):
    arr = np.zeros((30, 40), np.uint16)
    arr[:, 20:] = 4000  # 12-bit data in a 16-bit PNG
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    rgb = np.asarray(load_rgb(tmp_path / "a.png"))
    assert rgb[:, :20].max() == 0 and rgb[:, 20:].min() == 255  # today convert("RGB") gives all 255


def test_exif_orientation_is_the_same_frame_from_ingest_to_prediction(tmp_path):
    image = Image.fromarray(np.full((30, 60, 3), 90, np.uint8))  # stored 60 wide x 30 high
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: 30 wide x 60 high
    image.save(tmp_path / "a.jpg", exif=exif)
    (tmp_path / "b.csv").write_text("image,x1,y1,x2,y2\na.jpg,2,40,20,55\n")  # only fits the displayed frame
    result = read_quiet("csv", tmp_path)
    assert len(result.records) == 1
    rec = result.records.iloc[0]
    assert (rec.image_width, rec.image_height) == (30, 60) == load_rgb(tmp_path / "a.jpg").size


def test_palette_masks_are_read_by_index(tmp_path):
    m = np.zeros((30, 40), np.uint8)
    m[5:15, 10:22] = 1  # class index 1, whose palette colour is dark
    pal = Image.fromarray(m, mode="P")
    pal.putpalette([0, 0, 0, 40, 40, 40] + [0] * 762)
    solid_image(tmp_path / "images" / "a.png")
    (tmp_path / "masks").mkdir()
    pal.save(tmp_path / "masks" / "a.png")
    result = read_quiet("masks", tmp_path)
    assert len(result.records) == 1
    r = result.records.iloc[0]
    assert (r.x1, r.y1, r.x2, r.y2) == (10.0, 5.0, 22.0, 15.0)


@pytest.mark.parametrize("size", [(1, 1), (600, 2), (2, 600)])
def test_degenerate_images_are_quarantined_at_ingest(tmp_path, size):
    solid_image(tmp_path / "a.png", *size)
    solid_image(tmp_path / "ok.png")
    (tmp_path / "b.csv").write_text("image,x1,y1,x2,y2\na.png,0,0,1,1\nok.png,2,2,12,12\n")
    result = read_quiet("csv", tmp_path)
    assert_accounted(result, 2)
    assert len(result.records) == 1 and "degenerate image" in reasons(result, "image_path")[0]


def test_roboflow_coco_export_keeps_every_row_and_its_folder_split(tmp_path):
    for split in ("train", "valid", "test"):
        solid_image(tmp_path / split / f"{split}.jpg")
        images = [{"id": 0, "file_name": f"{split}.jpg"}]
        coco_file(
            tmp_path / split / "_annotations.coco.json", images, [ann(0, image_id=0), ann(1, image_id=0)]
        )
    result = read_quiet("coco", tmp_path)
    assert_accounted(result, 6)
    assert len(result.records) == 6
    assert sorted(result.records["split"]) == ["test", "test", "train", "train", "val", "val"]


# ---------------------------------------------------------------------------------------- dataset root


def test_paths_outside_the_root_are_quarantined_without_opening(tmp_path):
    root = tmp_path / "ds"
    secret = solid_image(tmp_path / "outside.jpg")
    solid_image(root / "a.jpg")
    os.symlink(secret, root / "link.jpg")
    (root / "b.csv").write_text(
        "image,x1,y1,x2,y2\n../outside.jpg,2,2,12,12\n"
        f"{secret},2,2,12,12\nlink.jpg,2,2,12,12\na.jpg,2,2,12,12\n"
    )
    result = read_quiet("csv", root)
    assert_accounted(result, 4)
    assert list(result.records["image_path"]) == [str((root / "a.jpg").resolve())]
    assert all("outside the dataset root" in r for r in reasons(result))
    assert str(secret) not in json.dumps(result.manifest["source_hashes"])  # never opened and hashed


def test_a_symlink_listed_by_a_folder_reader_is_contained_too(tmp_path):
    from helpers import mask

    secret = solid_image(tmp_path / "outside.png")
    root = tmp_path / "ds"
    solid_image(root / "images" / "a.png")
    mask(root / "masks" / "a.png", (3, 4, 20, 25))
    mask(root / "masks" / "b.png", (3, 4, 20, 25))
    os.symlink(secret, root / "images" / "b.png")
    result = read_quiet("masks", root)
    assert_accounted(result, 2)
    assert len(result.records) == 1 and "outside the dataset root" in reasons(result, "image_path")[0]


# ------------------------------------------------------------------------------------------------ fuzz


@pytest.mark.parametrize("ref", ["a\u0000b.jpg", "x" * 5000 + ".jpg", "/" + "y/" * 3000 + "z.jpg"])
def test_unusable_paths_quarantine_the_row_not_the_file(tmp_path, ref):
    solid_image(tmp_path / "a.jpg")
    rows = [{"image": ref, "bbox": [2, 2, 12, 12]}, {"image": "a.jpg", "bbox": [2, 2, 12, 12]}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "b.csv").write_text(f"image,x1,y1,x2,y2\n{ref},2,2,12,12\na.jpg,2,2,12,12\n")
    for fmt in ("jsonl", "csv"):
        result = read_quiet(fmt, tmp_path)
        assert_accounted(result, 2)
        assert len(result.records) == 1 and result.quarantine["row"].tolist() == [1 if fmt == "jsonl" else 2]


def test_an_inverted_mask_is_quarantined_and_a_large_real_lesion_is_not(tmp_path):
    """Lesion black on white would become a box over the whole image; a lesion filling most of the image
    but not its border is a real (large) finding."""
    solid_image(tmp_path / "images" / "inverted.png")
    solid_image(tmp_path / "images" / "large.png")
    m = np.full((30, 40), 255, np.uint8)
    m[10:18, 12:22] = 0  # the lesion, black on white
    (tmp_path / "masks").mkdir()
    Image.fromarray(m, "L").save(tmp_path / "masks" / "inverted.png")
    large = np.zeros((30, 40), np.uint8)
    large[2:28, 2:38] = 255  # 78 % of the image, none of its border
    Image.fromarray(large, "L").save(tmp_path / "masks" / "large.png")
    result = read_quiet("masks", tmp_path)
    assert_accounted(result, 2)
    assert list(result.records["record_id"]) == ["large"]
    (why,) = reasons(result, "mask_path")
    assert "inverted" in why and "inverted.png" in why


@pytest.mark.parametrize("filename", ["../outside.jpg", "/etc/outside.jpg", "elsewhere/a.jpg"])
def test_a_refused_voc_filename_is_quarantined_not_replaced_by_the_xml_stem(tmp_path, filename):
    solid_image(
        tmp_path / "JPEGImages" / "a.jpg"
    )  # shares the XML file's stem: the guess the reader must not make
    solid_image(tmp_path.parent / "outside.jpg")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        f"<annotation><filename>{filename}</filename><object><name>x</name>"
        "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>12</xmax><ymax>12</ymax></bndbox></object></annotation>"
    )
    result = read_quiet("voc", tmp_path)
    assert_accounted(result, 1)
    assert len(result.records) == 0 and filename in reasons(result, "filename")[0]


def test_the_answer_block_wins_over_a_box_mentioned_while_thinking(tmp_path):
    solid_image(tmp_path / "a.jpg")
    answer = "<think>the lesion is not at [1, 1, 5, 5] but lower</think><answer>[2, 3, 12, 13]</answer>"
    echoed = "<think>format: <answer>[0, 0, 1, 1]</answer></think> <answer>[4, 4, 14, 14]</answer>"
    rows = [
        {
            "image": "a.jpg",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": answer}],
        },
        {"image": "a.jpg", "solution": echoed, "query": "r"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_quiet("jsonl", tmp_path)
    assert_accounted(result, 2)
    got = result.records[["x1", "y1", "x2", "y2"]].values.tolist()
    assert got == [[2, 3, 12, 13], [4, 4, 14, 14]], got
