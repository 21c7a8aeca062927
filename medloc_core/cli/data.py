"""``medloc data synth | ingest | preprocess``: the data area of the ``medloc`` command.

Imports of numpy/pandas/Pillow happen inside the handlers so that ``medloc --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medloc_core.data.readers import FORMATS  # one list: the readers registry
from medloc_core.data.synth import KINDS

log = logging.getLogger(__name__)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected train,val,test fractions, got {text!r}")
    return parts  # type: ignore[return-value]


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="generate synthetic datasets, ingest dataset folders, preprocess records",
        description="Dataset handling. Boxes are (x1, y1, x2, y2) pixels of the original image.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    synth = sub.add_parser(
        "synth",
        help="write a synthetic dataset in a real dataset's layout",
        description=(
            "Write N synthetic images with exact masks/boxes: ham10000 (dermoscopy, HAM10000 layout), tn3k "
            "(thyroid ultrasound with speckle, TN3K layout with fold JSON and JPEG masks), xray (lateral foot "
            "X-ray, calcaneus boxes, COCO JSON). Deterministic for a seed. Ground truth: OUT/medloc_synth.json."
        ),
    )
    synth.add_argument("--kind", required=True, choices=KINDS)
    synth.add_argument("--n", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument(
        "--size",
        type=int,
        default=None,
        help="image width in px (height keeps the aspect ratio); e.g. 224 for fast CPU runs",
    )
    synth.add_argument(
        "--target-scale", type=float, default=1.0, help="target size multiplier (<1: smaller, harder)"
    )
    synth.add_argument(
        "--contrast", type=float, default=1.0, help="target contrast in (0, 1] (lower: harder)"
    )
    synth.add_argument("--blur", type=float, default=0.0, help="Gaussian blur sigma in px on the whole image")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    synth.set_defaults(func=_synth)

    ingest = sub.add_parser(
        "ingest",
        help="read a dataset folder into records + quarantine",
        description=(
            "Read a dataset folder as downloaded. Writes OUT/records.parquet (one row per box, original "
            "pixels), OUT/quarantine.csv (source_file,row,field,reason for every rejected input item) and "
            "OUT/manifest.json. Exits non-zero when the quarantined share exceeds --max-quarantine-fraction."
        ),
    )
    ingest.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    ingest.add_argument(
        "--root", required=True, help="dataset folder (or annotation file for coco/csv/jsonl/voc)"
    )
    ingest.add_argument("--out", required=True, help="output folder")
    ingest.add_argument(
        "--max-quarantine-fraction", type=float, default=0.2, help="fail above this share (default 0.2)"
    )
    ingest.add_argument(
        "--mask-mode",
        choices=("union", "largest", "each"),
        default=None,
        help="multi-component masks (ham10000, isic2018, tn3k, masks); default union",
    )
    ingest.add_argument(
        "--fold", type=int, default=None, help="tn3k fold JSON to use for train/val (default 0)"
    )
    ingest.add_argument("--dataset", default=None, help="dataset name to record (default: per format)")
    ingest.add_argument(
        "--labels",
        default=None,
        help="comma-separated allowed labels (coco, voc, yolo, csv, jsonl); others are quarantined",
    )
    ingest.add_argument(
        "--coords",
        choices=("pixels", "norm1", "norm1000"),
        default=None,
        help="box units in csv/jsonl (default pixels)",
    )
    ingest.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.set_defaults(func=_ingest)

    prep = sub.add_parser(
        "preprocess",
        help="split by group, build prompts and the model-input frame",
        description=(
            "Split records by group (no leakage; official splits kept), add prompt_text and the Qwen2.5-VL "
            "input frame (input_width/height, in_x1..in_y2). Writes OUT/prepared.parquet and "
            "OUT/preprocess_manifest.json."
        ),
    )
    prep.add_argument("--records", required=True, help="records.parquet from `medloc data ingest`")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a run config: its preprocessing block gives every default below (the pipeline's settings; "
        "`medloc train --config` with the same file then agrees); without it, the block's own defaults",
    )
    prep.add_argument("--seed", type=int, default=None)
    prep.add_argument(
        "--split-fractions", type=_fractions, default=None, help="train,val,test, e.g. 0.8,0.1,0.1"
    )
    prep.add_argument(
        "--ignore-existing-splits", action="store_true", help="re-split everything, ignoring official splits"
    )
    prep.add_argument("--min-pixels", type=int, default=None, help="Qwen2.5-VL min_pixels")
    prep.add_argument("--max-pixels", type=int, default=None, help="Qwen2.5-VL max_pixels")
    prep.add_argument("--answer-style", choices=("think", "answer"), default=None)
    prep.add_argument(
        "--prior-knowledge",
        action="store_true",
        default=None,
        help="prepend medical prior knowledge (VRFT-Aug)",
    )
    prep.set_defaults(func=_preprocess)


def _synth(args: argparse.Namespace) -> int:
    from medloc_core.data.synth import generate
    from medloc_core.data.synth_render import Difficulty

    try:
        difficulty = Difficulty(args.target_scale, args.contrast, args.blur)
        truth = generate(
            args.kind,
            args.out,
            n=args.n,
            seed=args.seed,
            size=args.size,
            difficulty=difficulty,
            workers=args.workers,
        )
    except ValueError as exc:
        print(f"medloc data synth: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {truth['n']} {args.kind} images ({truth['width']}x{truth['height']}) to {args.out}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from medloc_core.data.ingest import ingest
    from medloc_core.data.records import QuarantineLimitExceeded

    options: dict = {}
    if args.mask_mode is not None:
        options["mask_mode"] = args.mask_mode
    if args.fold is not None:
        options["fold"] = args.fold
    if args.dataset is not None:
        options["dataset"] = args.dataset
    if args.labels is not None:
        options["labels"] = [x.strip() for x in args.labels.split(",") if x.strip()]
    if args.coords is not None:
        options["coords"] = args.coords
    try:
        result = ingest(
            args.fmt,
            args.root,
            args.out,
            max_quarantine_fraction=args.max_quarantine_fraction,
            workers=args.workers,
            progress=not args.no_progress,
            **options,
        )
    except QuarantineLimitExceeded as exc:
        print(f"medloc data ingest: {exc}", file=sys.stderr)
        return 3
    except TypeError as exc:  # an option the chosen reader does not take
        print(f"medloc data ingest: option not supported by --format {args.fmt}: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"medloc data ingest: {exc}", file=sys.stderr)
        return 2
    c = result.manifest["counts"]
    print(
        f"{c['input_rows']} input rows -> {c['records']} records, {c['quarantined']} quarantined; wrote {Path(args.out)}"
    )
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from medloc_core.data.preprocess import preprocess
    from medloc_core.data.records import read_records
    from medloc_core.run_config import ConfigError, load_run_config, parse_block, preprocess_kwargs

    try:
        # One home for the defaults: the run config's preprocessing block (or the block's own defaults), as the
        # pipeline's preprocess step gets it; a flag given here overrides its key.
        block = (
            load_run_config(args.config)["preprocessing"] if args.config else parse_block("preprocessing", {})
        )
        flags = {
            "seed": args.seed,
            "split_fractions": args.split_fractions,
            "min_pixels": args.min_pixels,
            "max_pixels": args.max_pixels,
            "answer_style": args.answer_style,
            "prior_knowledge": args.prior_knowledge,
        }
        options = {**preprocess_kwargs(block), **{k: v for k, v in flags.items() if v is not None}}
        if args.ignore_existing_splits:
            options["honour_existing_splits"] = False
        records = read_records(args.records)
        prepared, manifest = preprocess(records, **options)
    except (FileNotFoundError, ValueError, ConfigError) as exc:
        print(f"medloc data preprocess: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prepared.to_parquet(out / "prepared.parquet", index=False)
    (out / "preprocess_manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    print(f"prepared {len(prepared)} records {manifest['counts']['by_split']}; wrote {out}")
    return 0
