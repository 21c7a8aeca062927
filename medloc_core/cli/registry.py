"""``medloc promote``, ``medloc predict`` and ``medloc evaluate``: the registry and the model by hand.

All three talk to ``$MLFLOW_TRACKING_URI`` when set, else to the project's local SQLite store
(``medloc_core.tracking``). Boxes are printed as ``(x1, y1, x2, y2)`` original-image pixels.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from medloc_core.evaluation.runner import EvaluationConfig
from medloc_core.images import MAX_IMAGE_PIXELS, ImageError, load_rgb

_EVAL = EvaluationConfig()  # the evaluation defaults have one home: medloc_core.run_config

logger = logging.getLogger(__name__)

# Same values as medloc_core.registry.versions (tested); repeated so that ``medloc --help`` does not import MLflow.
MODEL_NAME = "medloc-grounder"
CHAMPION = "champion"
DEFAULT_METRIC = "eval/A@0.5"


def _use_tracking_uri() -> str:
    import mlflow

    try:
        from medloc_core.tracking import tracking_uri

        uri = tracking_uri()
    except ImportError:
        import os

        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        mlflow.set_tracking_uri(uri)
    return mlflow.get_tracking_uri()


# ------------------------------------------------------------------------------------------- promote


def _cmd_promote(args: argparse.Namespace) -> int:
    from medloc_core.registry import versions
    from medloc_core.registry.gate import decision_json
    from medloc_core.registry.promote import promote_if_better

    uri = _use_tracking_uri()
    decision = promote_if_better(
        args.version,
        margin=args.margin,
        metric=args.metric,
        require_beats_base=not args.skip_base_check,
        require_significant_gain=not args.skip_significance_check,
        force=args.force,
    )
    if decision.unchanged:
        print(f"{versions.MODEL_NAME} version {args.version}: already the champion, nothing changed  ({uri})")
        return 0
    verdict = "PROMOTED to champion" if decision.promote else "NOT promoted"
    print(f"{versions.MODEL_NAME} version {args.version}: {verdict}  ({uri})")
    for reason in decision.reasons:
        print(f"  - {reason}")
    print(decision_json(decision))
    return 0 if decision.promote else 1  # a rejected promotion is not a success (scripts and CI can tell)


# ------------------------------------------------------------------------------------------- predict


def predict_one(
    model: str, image_path: str, query: str, *, answer_style: str | None, max_new_tokens: int
) -> dict:
    """One box for one image + query with a local model folder or an MLflow model URI; JSON-ready dict.

    Raises FileNotFoundError / :class:`~medloc_core.images.ImageError` (one line) for a missing, non-image or
    oversized file, before any model is loaded."""
    from medloc_core.registry import versions

    if not Path(image_path).is_file():
        raise FileNotFoundError(f"--image {image_path!r} does not exist or is not a file")
    image = load_rgb(image_path, max_pixels=MAX_IMAGE_PIXELS)
    if versions.is_model_uri(model):
        import mlflow.pyfunc
        import pandas as pd

        from medloc_core.registry.serving import encode_image

        _use_tracking_uri()
        versions.require_alias(model)
        pyfunc = mlflow.pyfunc.load_model(model)
        # The served model takes image bytes only (base64), never a path on its host.
        row = {"image": encode_image(image), "query": query}
        if answer_style is not None:
            from medloc_core.prompts import build_prompt_text

            row["prompt_text"] = build_prompt_text(query, answer_style=answer_style)
        out = pyfunc.predict(pd.DataFrame([row]), params={"max_new_tokens": max_new_tokens}).iloc[0]
        parsed = bool(out["parsed"])
        box = [float(out[c]) for c in ("x1", "y1", "x2", "y2")] if parsed else None
        completion = str(out["completion"])
    else:
        from medloc_core.model.inference import BoxPredictor
        from medloc_core.prompts import build_prompt_text

        predictor = BoxPredictor(model, max_new_tokens=max_new_tokens)
        result = predictor.predict(
            [image],
            [build_prompt_text(query, answer_style=answer_style or trained_answer_style(model))],
        )[0]
        box = list(result["box_original"]) if result["box_original"] is not None else None
        completion = result["completion"]
    return {"model": model, "image": image_path, "query": query, "box": box, "completion": completion}


def trained_answer_style(model_dir: str) -> str:
    """The answer style a training run's ``final`` folder was trained with (``medloc_training.json``), else
    ``think`` (the default prompt)."""
    summary = Path(model_dir) / "medloc_training.json"
    if summary.is_file():
        style = (json.loads(summary.read_text(encoding="utf-8")).get("config") or {}).get("answer_style")
        if style:
            return str(style)
    return "think"


def resolve_query(query: str | None, dataset: str) -> str:
    """``query`` itself, or the query template the preprocessing uses for ``dataset``."""
    from medloc_core.data.templates import default_query

    if query is not None:
        if not query.strip():
            raise ValueError("--query is empty")
        return query
    return default_query(dataset, "")


def _cmd_predict(args: argparse.Namespace) -> int:
    from medloc_core.plots import draw_box_on_image
    from medloc_core.registry.versions import NoModelAtAliasError

    query = resolve_query(args.query, args.dataset)
    try:
        result = predict_one(
            args.model, args.image, query, answer_style=args.answer_style, max_new_tokens=args.max_new_tokens
        )
    except (NoModelAtAliasError, FileNotFoundError, ImageError) as exc:
        print(f"medloc predict: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    if result["box"] is None:
        print("no box could be parsed from the model's answer", file=sys.stderr)
    if args.save_image:
        drawn = draw_box_on_image(load_rgb(args.image), result["box"])
        Path(args.save_image).parent.mkdir(parents=True, exist_ok=True)
        drawn.save(args.save_image)
        print(f"saved {args.save_image}", file=sys.stderr)
    return 0 if result["box"] is not None else 1


# ------------------------------------------------------------------------------------------ evaluate


def _read_table(path: Path) -> Any:
    """A prepared table from ``.parquet`` or ``.csv``; anything else is a one-line :class:`ValueError`."""
    import pandas as pd

    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow/pandas raise many kinds; the user needs one line
        kind = "a CSV" if path.suffix == ".csv" else "a parquet"
        raise ValueError(
            f"--data {str(path)!r} is not {kind} table of prepared records ({type(exc).__name__}); write one with "
            "`medloc data preprocess`, or leave --data out to use the table the model's run evaluated"
        ) from None


def _cmd_evaluate(args: argparse.Namespace) -> int:

    from medloc_core.evaluation.metrics import metrics_table
    from medloc_core.evaluation.runner import evaluate_model
    from medloc_core.registry import versions

    if versions.is_model_uri(args.model) or args.data is None:
        _use_tracking_uri()
    try:
        if args.data is None:  # the table the model's own pipeline run evaluated
            scratch = Path(tempfile.mkdtemp(prefix="medloc-eval-"))
            data = versions.evaluation_table(args.model, scratch)
        else:
            data = Path(args.data)
            if not data.is_file():
                raise FileNotFoundError(f"--data {args.data!r} does not exist")
        df = _read_table(data)
        model_dir = versions.resolve_model_dir(args.model)
    except (FileNotFoundError, ValueError, versions.NoModelAtAliasError) as exc:
        print(f"medloc evaluate: {exc}", file=sys.stderr)
        return 2
    metrics, predictions = evaluate_model(
        model_dir,
        df,
        split=None if args.split == "all" else args.split,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        n_boot=args.n_boot,
        limit=args.limit,
    )
    print(metrics_table({args.model: metrics}))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        predictions.to_csv(args.output, index=False)
        print(f"predictions: {args.output}", file=sys.stderr)
    if args.json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        Path(args.json).write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


# ------------------------------------------------------------------------------------------ register


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``promote``, ``predict`` and ``evaluate`` to the ``medloc`` command."""
    p = subparsers.add_parser(
        "promote",
        help=f"promote a {MODEL_NAME} version to @{CHAMPION} if it beats the champion (and the base model)",
        description=(
            f"Compare version N of {MODEL_NAME} with the current @{CHAMPION} on the same evaluation set and move "
            "the alias when it wins by more than --margin. The decision and its reasons are stored on the version."
        ),
    )
    p.add_argument("--version", type=int, required=True, help="model version number")
    p.add_argument("--margin", type=float, default=0.0, help="required gain over the champion (metric units)")
    p.add_argument("--metric", default=DEFAULT_METRIC, help=f"metric to compare (default {DEFAULT_METRIC})")
    p.add_argument("--force", action="store_true", help="promote even if the gate says no (reasons are kept)")
    p.add_argument("--skip-base-check", action="store_true", help="do not require beating the base model")
    p.add_argument(
        "--skip-significance-check",
        action="store_true",
        help="accept a gain over the base model whose paired 95 %% interval reaches 0",
    )
    p.set_defaults(func=_cmd_promote)

    p = subparsers.add_parser(
        "predict",
        help="predict the box for one image and query; prints JSON (x1, y1, x2, y2 original pixels)",
    )
    p.add_argument(
        "--model",
        default=f"models:/{MODEL_NAME}@{CHAMPION}",
        help="MLflow model URI (models:/NAME@ALIAS, runs:/...) or a local model folder",
    )
    p.add_argument("--image", required=True, help="image file")
    p.add_argument(
        "--query",
        default=None,
        help="what to find; default: the training query of --dataset (small models answer best to the wording "
        "they were trained on)",
    )
    p.add_argument(
        "--dataset",
        default="ham10000",
        help="dataset whose query template to use when --query is omitted (default: ham10000)",
    )
    p.add_argument("--save-image", help="write the image with the predicted box drawn (red) to this PNG")
    p.add_argument("--max-new-tokens", type=int, default=_EVAL.max_new_tokens)
    p.add_argument(
        "--answer-style",
        choices=["think", "answer"],
        default=None,
        help="prompt style; default: what the model was trained with (registered tag, or the folder's "
        "medloc_training.json; else think)",
    )
    p.set_defaults(func=_cmd_predict)

    p = subparsers.add_parser(
        "evaluate",
        help="A@0.5, A@0.8, pseudo-mAP, mIoU (+95%% bootstrap CIs) of a model on prepared data",
    )
    p.add_argument(
        "--model",
        required=True,
        help="MLflow model URI (models:/medloc-grounder/3, ...@champion) or local folder",
    )
    p.add_argument(
        "--data",
        default=None,
        help="prepared records (.parquet or .csv); default: the table the model's pipeline run evaluated",
    )
    p.add_argument("--split", default="test", help="split to evaluate, or 'all'")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows")
    p.add_argument("--max-new-tokens", type=int, default=_EVAL.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=_EVAL.batch_size)
    p.add_argument(
        "--n-boot", type=int, default=_EVAL.n_boot, help="bootstrap resamples for the CIs (0: none)"
    )
    p.add_argument("--output", help="write per-query predictions to this CSV")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.set_defaults(func=_cmd_evaluate)
