"""Dataset readers: each takes a dataset folder as downloaded and returns a :class:`~medloc_core.data.scan.Scan`.

| format     | layout read                                                                                   |
|------------|-----------------------------------------------------------------------------------------------|
| ham10000   | ``HAM10000_images_part_1/`` (or ``_part1``), ``HAM10000_metadata[.csv]``, ``*_segmentation.png`` |
| isic2018   | ``ISIC2018_Task1*_{Training,Validation,Test}_{Input,GroundTruth}/``                           |
| tn3k       | ``trainval-image/``, ``trainval-mask/``, ``test-image/``, ``test-mask/``, ``tn3k-trainval-foldK.json`` |
| coco       | COCO detection JSON (``images``, ``annotations``, ``categories``) + image files                |
| voc        | Pascal VOC XML (``Annotations/*.xml``, ``JPEGImages/``)                                        |
| yolo       | ``images/**`` + ``labels/**/*.txt`` (normalised cx cy w h), ``data.yaml``/``classes.txt``      |
| csv        | CSV with an image column and box columns                                                       |
| jsonl      | grounding JSONL (``image``, ``query``/``problem``, ``bbox``/``solution`` or ``conversations``) |
| masks      | ``images/`` + ``masks/`` folders paired by file stem                                           |
"""

from __future__ import annotations

from collections.abc import Callable

from medloc_core.data.readers.boxfiles import read_csv_boxes, read_jsonl
from medloc_core.data.readers.coco import read_coco
from medloc_core.data.readers.ham10000 import read_ham10000
from medloc_core.data.readers.isic2018 import read_isic2018
from medloc_core.data.readers.maskdir import read_masks
from medloc_core.data.readers.tn3k import read_tn3k
from medloc_core.data.readers.voc import read_voc
from medloc_core.data.readers.yolo import read_yolo
from medloc_core.data.scan import Scan

READERS: dict[str, Callable[..., Scan]] = {
    "ham10000": read_ham10000,
    "isic2018": read_isic2018,
    "tn3k": read_tn3k,
    "coco": read_coco,
    "voc": read_voc,
    "yolo": read_yolo,
    "csv": read_csv_boxes,
    "jsonl": read_jsonl,
    "masks": read_masks,
}
FORMATS = tuple(READERS)


def get_reader(fmt: str) -> Callable[..., Scan]:
    try:
        return READERS[fmt]
    except KeyError:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}") from None


__all__ = ["FORMATS", "READERS", "get_reader"]
