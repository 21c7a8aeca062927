"""BoxPredictor on the real tiny Qwen2.5-VL: chat template, greedy decoding, frames, and evaluate_model.

``answering_model_dir`` is the tiny model after a few seconds of SFT on one constant answer
(``ANSWER_BOX`` in the model-input frame), so greedy decoding emits a parseable box and the frame mapping can
be checked with exact numbers.
"""

from __future__ import annotations

import pytest
from helpers import ANSWER_BOX, IMAGE_SIZES, answer_prompt, prepared_frame, random_image

from medloc_core.boxes import Frame


@pytest.fixture(scope="module")
def predictor(answering_model_dir):
    from medloc_core.model.inference import BoxPredictor

    return BoxPredictor(answering_model_dir, max_new_tokens=40)


@pytest.mark.slow
def test_predict_maps_boxes_back_to_original_pixels(predictor):
    images = [random_image(h, w, seed=10 + i) for i, (h, w) in enumerate(IMAGE_SIZES)]
    results = predictor.predict(images, [answer_prompt()] * len(images), batch_size=2)
    assert len(results) == 3
    for img, res in zip(images, results):
        assert res["box_input"] == ANSWER_BOX, res["completion"]
        frame = Frame.for_qwen(img.width, img.height, min_pixels=56 * 56, max_pixels=112 * 112)
        assert res["input_size"] == (frame.input_w, frame.input_h)
        assert res["box_original"] == pytest.approx(frame.to_original(ANSWER_BOX))
    # 150x100 -> 112x84 input: x scale 150/112, y scale 100/84
    assert results[0]["box_original"] == pytest.approx(
        (14 * 150 / 112, 28 * 100 / 84, 42 * 150 / 112, 56 * 100 / 84)
    )


@pytest.mark.slow
def test_batching_does_not_change_greedy_answers(predictor):
    images = [random_image(h, w, seed=20 + i) for i, (h, w) in enumerate(IMAGE_SIZES)]
    one_by_one = [r["completion"] for r in predictor.predict(images, [answer_prompt()] * 3, batch_size=1)]
    batched = [r["completion"] for r in predictor.predict(images, [answer_prompt()] * 3, batch_size=3)]
    assert one_by_one == batched


def test_unparseable_answer_gives_none(tiny_model_dir):
    from medloc_core.model.inference import BoxPredictor

    # the untrained tiny model answers with noise, never a box
    res = BoxPredictor(tiny_model_dir, max_new_tokens=8).predict([random_image(60, 60)], [answer_prompt()])[0]
    assert isinstance(res["completion"], str)
    assert res["box_input"] is None and res["box_original"] is None


@pytest.mark.slow
def test_predict_rejects_mismatched_inputs(predictor):
    with pytest.raises(ValueError, match="1 images but 2 prompt texts"):
        predictor.predict([random_image(60, 60)], [answer_prompt(), answer_prompt()])


@pytest.mark.slow
def test_evaluate_model_end_to_end(tmp_path, answering_model_dir):
    from medloc_core.evaluation.runner import evaluate_model

    df = prepared_frame(tmp_path)
    metrics, preds = evaluate_model(
        answering_model_dir, df, "test", max_new_tokens=40, batch_size=2, n_boot=100
    )
    assert list(preds.columns) == [
        "record_id",
        "dataset",
        "completion",
        "pred_x1",
        "pred_y1",
        "pred_x2",
        "pred_y2",
        "iou",
        "parsed",
    ]
    assert preds["record_id"].tolist() == ["r0", "r1", "r2"]
    assert preds["parsed"].all()
    assert preds["iou"].tolist()[:2] == pytest.approx([1.0, 1.0])
    assert preds["iou"][2] == 0.0  # answer box (in input frame 14..42) vs GT in the top-left 10 %
    assert metrics["eval/A@0.5"] == pytest.approx(200 / 3)
    assert metrics["eval/synth_a/A@0.8"] == 100.0
    assert metrics["eval/synth_b/A@0.5"] == 0.0
    assert metrics["eval/parse_failure_rate"] == 0.0
    assert metrics["eval/n"] == 3


@pytest.mark.slow
def test_evaluate_model_reports_bad_rows(tmp_path, answering_model_dir):
    from medloc_core.evaluation.runner import evaluate_model

    df = prepared_frame(tmp_path)
    df.loc[1, "image_path"] = str(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"row 1 \(record_id='r1'\): cannot open image"):
        evaluate_model(answering_model_dir, df, "test")
    with pytest.raises(ValueError, match="no rows to evaluate"):
        evaluate_model(answering_model_dir, df, "validation")
    with pytest.raises(ValueError, match=r"lacks columns \['x1'"):
        evaluate_model(answering_model_dir, df.drop(columns=["x1"]), "test")
