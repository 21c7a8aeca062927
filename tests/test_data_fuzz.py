"""Property tests of the CSV, JSONL and COCO readers: whatever the input, every row is accounted for and no
exception escapes."""

from __future__ import annotations

import json

from helpers import assert_accounted, coco_file, read_quiet, solid_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_CELL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"\r\n\x00'), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_CELL, min_size=0, max_size=7), max_size=8))
def test_fuzz_csv_every_row_accounted_and_no_exception(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("fuzz-csv")
    solid_image(root / "a.jpg")
    lines = ["image,x1,y1,x2,y2,label", "a.jpg,2,2,12,12,ok", *(",".join(r) for r in rows)]
    (root / "b.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = read_quiet("csv", root)
    # every non-blank line is a row (",,," too: it is quarantined as a row with no values)
    assert_accounted(result, sum(1 for line in lines[1:] if line.strip()))


_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


_OBJECT = st.fixed_dictionaries(
    {},
    optional={
        "image": st.sampled_from(["a.jpg", "../a.jpg", "/etc/passwd", "missing/a.jpg"]) | _JSON_VALUE,
        "bbox": st.sampled_from([[2, 2, 12, 12], [12, 12, 2, 2]]) | _JSON_VALUE,
        "query": _JSON_VALUE,
        "label": _JSON_VALUE,
        "split": st.sampled_from(["train", "val", "nope"]) | _JSON_VALUE,
        "id": _JSON_VALUE,
        "conversations": _JSON_VALUE,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=st.lists(_OBJECT | _JSON_VALUE, max_size=6))
def test_fuzz_jsonl_every_line_accounted_and_no_exception(tmp_path_factory, objects):
    root = tmp_path_factory.mktemp("fuzz-jsonl")
    solid_image(root / "a.jpg")
    lines = [json.dumps(o, allow_nan=True) for o in objects]
    (root / "d.jsonl").write_text("\n".join(lines) + "\n")
    result = read_quiet("jsonl", root)
    assert_accounted(result, len(lines))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    images=st.lists(
        st.fixed_dictionaries({"id": _JSON_VALUE, "file_name": st.just("a.jpg") | _JSON_VALUE}), max_size=3
    ),
    anns=st.lists(
        st.fixed_dictionaries(
            {"image_id": st.integers(0, 2) | _JSON_VALUE},
            optional={"id": _JSON_VALUE, "category_id": st.just(1) | _JSON_VALUE, "bbox": _JSON_VALUE},
        )
        | _JSON_VALUE,
        max_size=5,
    ),
)
def test_fuzz_coco_every_annotation_accounted_and_no_exception(tmp_path_factory, images, anns):
    root = tmp_path_factory.mktemp("fuzz-coco")
    solid_image(root / "images" / "a.jpg")
    coco_file(root / "c.json", images, anns)
    result = read_quiet("coco", root)
    c = result.manifest["counts"]
    assert c["source_rows_in_records"] + c["quarantined"] == c["input_rows"]
    assert c["input_rows"] >= len(anns)
