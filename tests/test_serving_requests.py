"""What the served model accepts: image bytes or base64 (never a path), a size limit checked before decoding, and
one-line HTTP 400 messages that never quote the payload."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from helpers import random_image

from medloc_core.registry.serving import BadRequest, encode_image, load_image


def test_load_image_takes_bytes_or_base64_never_a_path(tmp_path):
    img = random_image(20, 30)
    path = tmp_path / "x.png"
    img.save(path)
    b64 = encode_image(img)
    for value in (b64, "data:image/png;base64," + b64, path.read_bytes()):
        out = load_image(value)
        assert out.size == (30, 20)
        assert np.array_equal(np.asarray(out), np.asarray(img))
    for value, fragment in (
        (str(path), "must be base64-encoded image bytes (file paths are not accepted)"),
        ("/etc/passwd", "file paths are not accepted"),
        (base64.b64encode(b"not an image").decode(), "not a readable image"),
        ("", "is empty"),
        (12, "must be base64 text or bytes"),
    ):
        with pytest.raises(BadRequest, match=re.escape(fragment)) as err:
            load_image(value, row=3)
        assert err.value.get_http_status_code() == 400 and "\n" not in err.value.message
        assert err.value.message.startswith("row 3: ")


def test_oversized_images_are_refused_before_decoding(monkeypatch):
    from medloc_core import images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadRequest, match="over the limit of 100"):
        load_image(encode_image(random_image(20, 30)))


def test_bad_request_keeps_its_one_line_message_when_mlflow_rewrites_it():
    err = BadRequest("row 0: column 'query' is empty")
    err.message = "Failed to predict data '<a dump of the whole input>'. \nError: " + err.message
    assert err.message == "row 0: column 'query' is empty"
    assert json.loads(err.serialize_as_json())["message"] == "row 0: column 'query' is empty"
    with pytest.raises(ValueError, match="not a readable image"):  # BadRequest is a ValueError too
        load_image("aGVsbG8=")


@pytest.mark.parametrize(
    "message,fragment",
    [
        ("Failed to predict data '{\"query\": \"PAYLOAD\"}'. \nError: Model is missing inputs ['image'].", "['image']"),
        ("Invalid input. Ensure that input is a valid JSON formatted string. Error: 'x'\nInput: \nPAYLOAD", "UTF-8 JSON"),
        ("Failed to enforce schema of data 'PAYLOAD' with schema '...'", "signature"),
        ("Encountered an unexpected error while evaluating the model. PAYLOAD", "could not score"),
        ("something else entirely about PAYLOAD", "bad request"),
    ],
)  # fmt: skip
def test_every_refused_request_is_one_line_without_the_payload(message, fragment):
    from mlflow.exceptions import MlflowException

    from medloc_core.registry.serving import one_line_error

    text = one_line_error(MlflowException(message))
    assert fragment in text and "PAYLOAD" not in text and "\n" not in text, text
    assert one_line_error(BadRequest("row 0: column 'query' is empty")) == "row 0: column 'query' is empty"
