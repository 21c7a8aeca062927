"""What training accepts as input: prepared rows with finite input-frame boxes, in the processor's frame."""

from __future__ import annotations

import pytest
from helpers import make_prepared

from medloc_core.training.rows import check_frames, train_rows


def test_train_rows_errors_name_the_record(tmp_path) -> None:
    df = make_prepared(tmp_path / "img", n=4)
    assert len(train_rows(df)) == 2
    with pytest.raises(ValueError, match="missing column.*in_x1"):
        train_rows(df.drop(columns=["in_x1"]))
    with pytest.raises(ValueError, match="no split=='train' rows"):
        train_rows(df.assign(split="test"))
    bad = df.copy()
    bad.loc[1, "in_x2"] = bad.loc[1, "in_x1"] - 1
    with pytest.raises(ValueError, match="record_id='r1'"):
        train_rows(bad)


def test_frames_must_match_the_processor(tmp_path) -> None:
    from medloc_core.model import loading
    from medloc_core.model.standin import ensure_tiny_model

    proc = loading.load_processor(ensure_tiny_model(tmp_path / "models"))
    df = make_prepared(tmp_path / "img", n=4)
    check_frames(train_rows(df), proc)
    with pytest.raises(ValueError, match="record_id='r0'.*224x224.*max_pixels=12544"):
        check_frames(train_rows(df.assign(input_width=224, input_height=224)), proc)
