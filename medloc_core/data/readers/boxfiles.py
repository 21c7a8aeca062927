"""Tabular box files: CSV with box columns, and grounding JSONL.

CSV (every ``*.csv`` in the root folder, or the file given): an image column (``image``, ``image_path``,
``filename``, ``file_name``, ``file`` or ``path``) and a box as ``x1,y1,x2,y2`` or ``xmin,ymin,xmax,ymax``
(corners) or ``x,y,w,h``; optional ``label``, ``query``, ``record_id``/``id``, ``group_id``/``patient_id``,
``split``, ``dataset``. Row numbers are file line numbers (header = 1).

JSONL (every ``*.jsonl``): one object per line with ``image`` (path or one-element list), a query in
``query`` or ``problem`` and the box in ``bbox`` or ``solution`` (a list or text containing ``[x1, y1, x2,
y2]``, e.g. ``<answer>[..]</answer>``), or the VLM-R1 form ``conversations: [{"from": "human", "value":
"<image>..."}, {"from": "gpt", "value": "[x1,y1,x2,y2]"}]``. Optional ``id``, ``label``, ``group_id``,
``split``, ``dataset``.

``coords`` says how boxes are written: ``pixels`` (original pixels, default), ``norm1`` (0-1) or
``norm1000`` (0-1000, Qwen2-VL style).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from medloc_core.data.readers._common import (
    ImageFinder,
    csv_data_rows,
    decode_lines,
    parse_box_text,
    sniff_delimiter,
    split_value,
    units_from_targets,
)
from medloc_core.data.scan import Scan, Target, count_lines
from medloc_core.data.templates import TARGET_LABELS, default_query

COORD_FORMATS = {"pixels": "xyxy", "norm1": "norm1_xyxy", "norm1000": "norm1000_xyxy"}
IMAGE_COLUMNS = ("image", "image_path", "filename", "file_name", "file", "path")
BOX_COLUMN_SETS = (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"), ("x", "y", "w", "h"))


def _files(root: Path, suffix: str) -> list[Path]:
    if root.is_file():
        return [root]
    files = sorted(root.glob(f"*{suffix}")) or sorted(root.rglob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"{root}: no {suffix} files")
    return files


def _box_format(coords: str) -> str:
    if coords not in COORD_FORMATS:
        raise ValueError(f"coords must be one of {tuple(COORD_FORMATS)}, got {coords!r}")
    return COORD_FORMATS[coords]


def read_csv_boxes(
    root: Path, *, dataset: str = "csv", labels: list[str] | None = None, coords: str = "pixels"
) -> Scan:
    box_format = _box_format(coords)
    scan = Scan(options={"dataset": dataset, "labels": labels, "coords": coords})
    pairs_by_dataset: dict[str, list] = {}
    for path in _files(root, ".csv"):
        finder = ImageFinder(path.parent if root.is_file() else root, (path.parent,))
        one = Scan()
        try:
            pairs = _read_csv_file(path, finder, one, dataset, labels, coords, box_format)
        except Exception as exc:  # a value no check foresaw: lose nothing, say where
            scan.quarantine_file(
                path, "file", f"cannot read CSV: {type(exc).__name__}: {exc}", count_lines(path, header=True)
            )
            continue
        scan.quarantine.extend(one.quarantine)
        for name, image_path, target in pairs:
            pairs_by_dataset.setdefault(name, []).append((image_path, target))
    for name, pairs in pairs_by_dataset.items():
        scan.units.extend(units_from_targets(name, pairs))
    return scan


def _read_csv_file(
    path: Path,
    finder: ImageFinder,
    scan: Scan,
    dataset: str,
    labels: list[str] | None,
    coords: str,
    box_format: str,
) -> list[tuple[str, Path, Target]]:
    lines, bad_lines = decode_lines(path.read_bytes())
    data_rows = sum(1 for line in lines[1:] if line.strip()) + sum(1 for n in bad_lines if n > 1)
    if 1 in bad_lines:
        scan.quarantine_file(path, "header", "the header line is not valid UTF-8", data_rows)
        return []
    for number in bad_lines:
        scan.quarantine_item(path, number, "encoding", "row is not valid UTF-8 text")
    reader = csv.reader(lines, delimiter=sniff_delimiter(lines[0] if lines else ""))
    header = [h.strip().lower() for h in next(reader, [])]
    duplicates = sorted({h for h in header if h and header.count(h) > 1})
    if duplicates:
        scan.quarantine_file(path, "header", f"CSV header repeats column(s) {duplicates}", data_rows)
        return []
    image_col = next((c for c in IMAGE_COLUMNS if c in header), None)
    box_cols = next((cols for cols in BOX_COLUMN_SETS if all(c in header for c in cols)), None)
    if image_col is None or box_cols is None:
        reason = (
            f"CSV header {header} needs an image column {IMAGE_COLUMNS} and box columns {BOX_COLUMN_SETS}"
        )
        scan.quarantine_file(path, "header", reason, data_rows)
        return []
    fmt = "xywh" if box_cols[0] == "x" and coords == "pixels" else box_format
    out = []
    for line, row in csv_data_rows(reader, scan, path):
        if len(row) != len(header):
            scan.quarantine_item(
                path, line, "row", f"malformed row: {len(row)} fields, header has {len(header)}"
            )
            continue
        values = dict(zip(header, (c.strip() for c in row)))
        bad_field = next((c for c in box_cols if not _is_number(values[c])), None)
        if bad_field:
            scan.quarantine_item(path, line, bad_field, f"{bad_field}={values[bad_field]!r} is not a number")
            continue
        name = values.get("dataset") or dataset
        label = values.get("label") or TARGET_LABELS.get(name, "target")
        if labels is not None and label not in labels:
            scan.quarantine_item(path, line, "label", f"unknown label {label!r}; allowed {labels}")
            continue
        split = split_value(values.get("split"))
        if split is None:
            scan.quarantine_item(path, line, "split", f"unknown split {values.get('split')!r}")
            continue
        image_path = finder.find(values[image_col])
        if image_path is None:
            scan.quarantine_item(path, line, image_col, finder.why_not(values[image_col]))
            continue
        target = Target(
            record_id=values.get("record_id") or values.get("id") or f"{path.stem}_{line}",
            source_file=str(path),
            row=line,
            label=label,
            query=values.get("query") or default_query(name, label),
            group_id=values.get("group_id") or values.get("patient_id") or image_path.stem,
            split=split,
            box=tuple(float(values[c]) for c in box_cols),
            box_format=fmt,
        )
        out.append((name, image_path, target))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("true", "false")


def _conversation_parts(obj: dict) -> tuple[str | None, object]:
    query, answer = None, None
    for turn in obj.get("conversations") or []:
        if not isinstance(turn, dict):
            continue
        who = str(turn.get("from", turn.get("role", ""))).lower()
        if who in ("human", "user") and query is None:
            query = str(turn.get("value", turn.get("content", ""))).replace("<image>", "").strip()
        elif who in ("gpt", "assistant") and answer is None:
            answer = turn.get("value", turn.get("content"))
    return query, answer


def _jsonl_target(
    path: Path,
    line_num: int,
    line: str,
    finder: ImageFinder,
    scan: Scan,
    dataset: str,
    labels: list[str] | None,
    box_format: str,
) -> tuple[str, Path, Target] | None:
    """One JSONL line -> (dataset, image, target), or None after quarantining it."""
    try:
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("line is not a JSON object")
    except ValueError as exc:
        scan.quarantine_item(path, line_num, "json", f"malformed JSON line: {exc}")
        return None
    conv_query, conv_answer = _conversation_parts(obj)
    image_ref = obj.get("image", obj.get("image_path"))
    if isinstance(image_ref, list):
        image_ref = image_ref[0] if len(image_ref) == 1 else None
    if not isinstance(image_ref, str) or not image_ref.strip():
        scan.quarantine_item(path, line_num, "image", f"needs one image path, got {obj.get('image')!r}")
        return None
    raw_box = next((obj[k] for k in ("bbox", "solution") if k in obj), conv_answer)
    box = parse_box_text(raw_box)
    if box is None:
        scan.quarantine_item(path, line_num, "bbox", f"no [x1, y1, x2, y2] box in {str(raw_box)[:120]!r}")
        return None
    name = str(obj.get("dataset") or dataset)
    label = str(obj.get("label") or TARGET_LABELS.get(name, "target"))
    if labels is not None and label not in labels:
        scan.quarantine_item(path, line_num, "label", f"unknown label {label!r}; allowed {labels}")
        return None
    split = split_value(obj.get("split"))
    if split is None:
        scan.quarantine_item(path, line_num, "split", f"unknown split {obj.get('split')!r}")
        return None
    image_path = finder.find(image_ref)
    if image_path is None:
        scan.quarantine_item(path, line_num, "image", finder.why_not(image_ref))
        return None
    query = obj.get("query") or obj.get("problem") or conv_query or default_query(name, label)
    target = Target(
        record_id=str(obj["id"]) if obj.get("id") not in (None, "") else f"{path.stem}_{line_num}",
        source_file=str(path),
        row=line_num,
        label=label,
        query=str(query),
        group_id=str(obj.get("group_id") or image_path.stem),
        split=split,
        box=tuple(box),
        box_format=box_format,
    )
    return name, image_path, target


def read_jsonl(
    root: Path,
    *,
    dataset: str = "jsonl",
    image_root: str | None = None,
    labels: list[str] | None = None,
    coords: str = "pixels",
) -> Scan:
    box_format = _box_format(coords)
    scan = Scan(options={"dataset": dataset, "labels": labels, "coords": coords, "image_root": image_root})
    pairs_by_dataset: dict[str, list] = {}
    for path in _files(root, ".jsonl"):
        bases = [Path(image_root)] if image_root else []
        finder = ImageFinder(path.parent if root.is_file() else root, (*bases, path.parent))
        lines, bad_lines = decode_lines(path.read_bytes())
        for line_num in bad_lines:
            scan.quarantine_item(path, line_num, "encoding", "line is not valid UTF-8 text")
        for line_num, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = _jsonl_target(path, line_num, line, finder, scan, dataset, labels, box_format)
            except Exception as exc:  # a value no check foresaw: quarantine the line, keep reading
                scan.quarantine_item(path, line_num, "line", f"cannot read line: {type(exc).__name__}: {exc}")
                continue
            if item is not None:
                pairs_by_dataset.setdefault(item[0], []).append((item[1], item[2]))
    for name, pairs in pairs_by_dataset.items():
        scan.units.extend(units_from_targets(name, pairs))
    return scan
