"""The served model: the MLflow pyfunc ``MedLocGrounderModel`` (logged from code, ``served_model.py``), its
input handling (base64 image bytes only; one-line HTTP 400s), signature, input example and pinned requirements.

``medloc_core.registry.versions`` logs and registers it; this module is what runs on a serving host.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from medloc_core import images
from medloc_core.boxes import clip_box
from medloc_core.images import ImageError, load_rgb
from medloc_core.model.inference import BoxPredictor
from medloc_core.prompts import build_prompt_text

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # key of the model folder in the pyfunc's artifacts
OUTPUT_COLUMNS = ("x1", "y1", "x2", "y2", "completion", "parsed")


class BadRequest(MlflowException, ValueError):
    """A scoring request the model cannot serve: HTTP 400 with exactly this one-line message, no stack trace.

    MLflow's scoring server rewrites the message of an ``MlflowException`` raised in ``predict`` to
    ``"Failed to predict data '<the whole input frame>'. Error: ..."``; this class keeps the first message it
    is given, so the client reads one line instead of a dump of its own (base64) input.
    """

    def __init__(self, message: str) -> None:
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        super().__init__(" ".join(str(message).split()), error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:  # type: ignore[override]
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


def load_image(value: Any, *, row: int | None = None) -> Any:
    """A PIL RGB image (EXIF orientation applied, 8-bit) from image bytes or their base64 text (optionally a
    ``data:image/...;base64,`` URI). A path is never opened: the served model must not read its host's files.
    Raises :class:`BadRequest` (a ``ValueError`` too) for anything else, a non-image or an image over
    ``images.MAX_IMAGE_PIXELS``."""

    where = f"row {row}: " if row is not None else ""
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                f"{where}column 'image' must be base64-encoded image bytes (file paths are not accepted), "
                f"got {value[:40]!r}"
            ) from None
        if not data:
            raise BadRequest(f"{where}column 'image' is empty")
    else:
        raise BadRequest(f"{where}column 'image' must be base64 text or bytes, got {type(value).__name__}")
    try:
        return load_rgb(data, max_pixels=images.MAX_IMAGE_PIXELS)  # read at call time: one setting
    except ImageError as exc:
        raise BadRequest(f"{where}column 'image': {exc}") from None


def one_line_error(exc: BaseException) -> str:
    """The client-facing text of a refused request: one line that never quotes the payload.

    MLflow's scoring server builds its 400 messages from the request itself (``Failed to predict data '<the
    whole frame>'``, ``Input: <the raw body>``, a ``UnicodeDecodeError`` with the bytes); only the message of a
    :class:`BadRequest` (written by this module, payload-free) is passed on as is.
    """
    if isinstance(exc, BadRequest):
        return exc.message
    text = str(getattr(exc, "message", exc))
    missing = re.search(r"missing inputs? (\[[^\]]{0,200}\])", text)
    if missing:
        return f"input is missing column(s) {missing.group(1)}; send columns 'image' and 'query'"
    if "valid JSON" in text or "UTF-8" in text or "Unicode" in text:
        return "request body must be UTF-8 JSON (pandas 'dataframe_split' or 'dataframe_records')"
    if "enforce schema" in text:
        return "input does not match the model's signature: a string column 'image' (base64) and 'query'"
    if "unexpected error" in text:
        return "the model could not score this input; check the columns 'image' (base64) and 'query'"
    return "bad request: send JSON with columns 'image' (base64 image bytes) and 'query'"


def install_one_line_errors() -> bool:
    """Make the MLflow scoring server of this process answer every refused request with :func:`one_line_error`.

    ``mlflow models serve`` loads the model (``load_context``) in the server process before it serves, and its
    request handler looks ``invocations`` up in its module at each call; this wraps that function once. Returns
    whether the wrapper is in place (False when MLflow's server module has no such function).
    """
    try:
        from mlflow.pyfunc import scoring_server
    except ImportError:  # pragma: no cover - mlflow without its serving extras
        return False
    original = getattr(scoring_server, "invocations", None)
    if original is None:
        return False
    if getattr(original, "_medloc_one_line", False):
        return True

    def invocations(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except MlflowException as exc:
            if exc.get_http_status_code() >= 500:
                raise
            logger.info("refused a scoring request: %s", " ".join(str(exc.message).split())[:300])
            raise BadRequest(one_line_error(exc)) from None

    invocations._medloc_one_line = True  # type: ignore[attr-defined]
    scoring_server.invocations = invocations
    return True


def encode_image(image: Any, fmt: str = "PNG") -> str:
    """Base64 text of a PIL image (the ``image`` column format for remote scoring)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class MedLocGrounderModel(PythonModel):
    """MLflow pyfunc: ``predict(DataFrame[image, query(, prompt_text)]) -> DataFrame[x1, y1, x2, y2, completion,
    parsed]``.

    ``image``: base64-encoded image bytes (or raw bytes); never a path. ``query``: the grounding query, turned
    into the training prompt with ``prompts.build_prompt_text`` and the answer style the model was trained with
    (the ``answer_style`` of the logged ``model_config``); an optional ``prompt_text`` column is used verbatim.
    Boxes are original-image pixels clipped to the image; ``None`` (JSON ``null``) when the answer did not
    parse. ``params`` may set ``max_new_tokens`` and ``batch_size``. A bad request raises :class:`BadRequest`
    (HTTP 400, one line).

    Logged from code (``served_model.py``, MLflow's models-from-code), never as a pickled object: loading the
    model runs only this package's code, which travels with the model (``code_paths``).
    """

    # MLflow 3 wraps ``predict`` and warns unless it has type hints it can turn into a signature; this model
    # declares an explicit signature at logging time (``signature``) instead. The same opt-out MLflow's
    # ChatModel uses.
    _skip_type_hint_validation = True

    def __init__(self, answer_style: str = "think", max_new_tokens: int = 128, device: str = "cpu") -> None:
        self.default_query: str | None = None
        self.answer_style = answer_style
        self.max_new_tokens = max_new_tokens
        self.device = device
        self._predictor = None

    def load_context(self, context: Any) -> None:

        config = dict(getattr(context, "model_config", None) or {})
        self.answer_style = str(config.get("answer_style", self.answer_style))
        self.default_query = config.get("default_query") or None  # the query the model was trained with
        self.max_new_tokens = int(config.get("max_new_tokens", self.max_new_tokens))
        device = os.environ.get("MEDLOC_DEVICE", str(config.get("device", self.device)))
        self._predictor = BoxPredictor(
            context.artifacts[MODEL_ARTIFACT], device=device, max_new_tokens=self.max_new_tokens
        )
        install_one_line_errors()  # a no-op outside a scoring server

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201

        if self._predictor is None:
            self.load_context(context)
        try:
            df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"input must be a table with columns 'image' and 'query': {exc}") from None
        if "image" not in df.columns:
            raise BadRequest(f"input needs a column 'image' (and optionally 'query'); got {list(df.columns)}")
        params = dict(params or {})
        pictures = [load_image(v, row=i) for i, v in enumerate(df["image"])]
        prompts = []
        for i in range(len(df)):
            given = df["prompt_text"].iloc[i] if "prompt_text" in df.columns else None
            if isinstance(given, str) and given.strip():
                prompts.append(given)
                continue
            query = df["query"].iloc[i] if "query" in df.columns else None
            if not isinstance(query, str) or not query.strip():
                query = self.default_query
            if query is None:
                raise BadRequest(f"row {i}: no 'query' (this model has no default query)")
            prompts.append(build_prompt_text(query, answer_style=self.answer_style))
        predictor = self._predictor
        try:
            predictor.max_new_tokens = int(params.get("max_new_tokens", self.max_new_tokens))
            batch_size = int(params.get("batch_size", 4))
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"params: {exc}") from None
        if not 1 <= predictor.max_new_tokens <= 4096 or batch_size < 1:
            raise BadRequest("params: max_new_tokens must be in 1..4096 and batch_size >= 1")
        outputs = predictor.predict(pictures, prompts, batch_size=batch_size)
        rows = []
        for image, out in zip(pictures, outputs):
            box = out["box_original"]
            if box is not None:
                box = clip_box(box, image.width, image.height)
            coords = box if box is not None else (None,) * 4
            rows.append(
                {
                    **dict(zip(("x1", "y1", "x2", "y2"), coords)),
                    "completion": out["completion"],
                    "parsed": box is not None,
                }
            )
        frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
        return frame.astype({c: object for c in ("x1", "y1", "x2", "y2")})


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "image"),
            ColSpec("string", "query", required=False),
            ColSpec("string", "prompt_text", required=False),
        ]
    )
    outputs = Schema(
        [
            *(ColSpec("double", c) for c in ("x1", "y1", "x2", "y2")),
            ColSpec("string", "completion"),
            ColSpec("boolean", "parsed"),
        ]
    )
    params = ParamSchema([ParamSpec("max_new_tokens", "long", 128), ParamSpec("batch_size", "long", 4)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example(query: str | None = None) -> pd.DataFrame:
    """One request in the served format: a dermoscopy-like image (base64 JPEG, 300 x 225 px, the synthetic
    HAM10000 renderer's) and ``query``, or no query column at all (the model's default query is used)."""
    from PIL import Image

    from medloc_core.data.synth_render import Difficulty, render_dermoscopy

    pixels, _ = render_dermoscopy((7,), (7,), 300, 225, Difficulty())
    frame = pd.DataFrame({"image": [encode_image(Image.fromarray(pixels), fmt="JPEG")]})
    if query is not None:
        frame["query"] = [query]
    return frame


def pip_requirements() -> list[str]:
    """Pinned from the running environment: MLflow's inference of them costs ~10 s (measured). With the
    package code in ``code_paths`` this is everything ``served_model.py`` imports."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in (
        "mlflow",
        "torch",
        "transformers",
        "accelerate",
        "peft",
        "pillow",
        "pandas",
        "numpy",
        "tokenizers",
        "safetensors",
        "scipy",
        "tqdm",
        "PyYAML",
    ):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return reqs
