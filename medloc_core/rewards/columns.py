"""How a reward function reads what TRL passes it: the signature every reward has, and the per-completion
dataset column (``dataset``), checked to match the number of completions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

RewardFunc = Callable[..., list[float | None]]


def dataset_column(kwargs: Mapping[str, Any], n: int, name: str, required: bool) -> list[str | None] | None:
    names = kwargs.get("dataset")
    if names is None:
        if required:
            raise ValueError(f"{name}: a per-dataset schedule needs the 'dataset' column")
        return None
    if len(names) != n:
        raise ValueError(f"{name}: {n} completions but {len(names)} 'dataset' values")
    return list(names)
