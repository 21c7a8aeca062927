"""Secret-looking variables in run configs: substituted only where a value is used, never recorded.

ZenML substitutes every ``${VAR}`` of a run config into the run's snapshot, which it stores; MLflow params, the
manifest and step artifacts are recorded from the same values. For a variable whose name looks secret (it
contains ``KEY``, ``SECRET``, ``TOKEN`` or ``PASSWORD``, or is listed, comma-separated, in
``MEDLOC_SECRET_VARS``) the pipeline instead passes ``${secret:NAME}`` on (:func:`defer`): ZenML leaves it
alone, every record shows the name, and the library puts the value in only where it is used (a data root, a
reader option, a model path, an image path; :func:`reveal`). Outputs derived from a revealed value (file
paths in the records, the manifest's roots, quarantine entries) carry the placeholder again (:func:`mask`), so
the value is in none of them. The step's environment must have the variable (on Kubernetes: from a secret).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

SECRET_NAME_PARTS = ("KEY", "SECRET", "TOKEN", "PASSWORD")
EXTRA_NAMES_ENV = "MEDLOC_SECRET_VARS"
#: Shorter values are not masked in outputs: a 3-letter value would replace unrelated text.
MIN_MASKED_LENGTH = 4

PLACEHOLDER = re.compile(r"\$\{([a-zA-Z0-9_]+)\}")  # what ZenML substitutes (its own pattern)
_DEFERRED = re.compile(r"\$\{secret:([A-Za-z_][A-Za-z0-9_]*)\}")  # what it leaves alone


def _map_strings(value: Any, fn: Any, *, keys: bool = False) -> Any:
    """``value`` (YAML-like data: dicts, lists, tuples) with ``fn`` applied to every string (and dict key)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {
            (fn(k) if keys and isinstance(k, str) else k): _map_strings(v, fn, keys=keys)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_map_strings(v, fn, keys=keys) for v in value)
    return value


def is_secret_name(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether values of variable ``name`` are secret (see the module docstring)."""
    env = os.environ if env is None else env
    listed = {n.strip() for n in env.get(EXTRA_NAMES_ENV, "").split(",") if n.strip()}
    return name in listed or any(part in name.upper() for part in SECRET_NAME_PARTS)


def defer(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """``value`` (the ``parameters:`` of a run config: strings inside dicts and lists) with each ``${NAME}``
    of a secret-looking variable turned into ``${secret:NAME}``; other placeholders are kept for ZenML."""

    def one(match: re.Match) -> str:
        return f"${{secret:{match.group(1)}}}" if is_secret_name(match.group(1), env) else match.group(0)

    return _map_strings(value, lambda text: PLACEHOLDER.sub(one, text))


def deferred_names(value: Any) -> set[str]:
    """The variable names of every ``${secret:NAME}`` in ``value`` (strings inside dicts, lists, tuples)."""
    names: set[str] = set()
    _map_strings(value, lambda text: names.update(_DEFERRED.findall(text)))
    return names


def reveal(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """``value`` with every ``${secret:NAME}`` replaced by the variable's value (recursively).

    Raises:
        KeyError: a named variable is not set in this process's environment (the message names it).
    """
    env = os.environ if env is None else env

    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in env:
            raise KeyError(f"environment variable {name} is not set (the run config uses ${{{name}}})")
        return env[name]

    return _map_strings(value, lambda text: _DEFERRED.sub(one, text) if "${secret:" in text else text)


def mask(value: Any, names: set[str], env: Mapping[str, str] | None = None) -> Any:
    """``value`` with the values of the variables ``names`` replaced by ``${secret:NAME}`` in every string
    (dicts, lists, tuples; a pandas DataFrame's text columns)."""
    env = os.environ if env is None else env
    pairs = sorted(
        ((env[n], n) for n in names if len(env.get(n, "")) >= MIN_MASKED_LENGTH),
        key=lambda p: -len(p[0]),  # longest first: a value that contains another is replaced whole
    )
    if not pairs:
        return value

    def one(text: str) -> str:
        for secret, name in pairs:
            text = text.replace(secret, f"${{secret:{name}}}")
        return text

    if hasattr(value, "select_dtypes") and hasattr(value, "copy"):  # a pandas DataFrame
        out = value.copy()
        for column in out.select_dtypes(include=["object", "string"]).columns:
            out[column] = [_map_strings(v, one) for v in out[column]]
        return out
    return _map_strings(value, one, keys=True)


@contextlib.contextmanager
def masked_logs(names: set[str], env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Mask the values of ``names`` in every log record emitted inside the block (the handlers of the root
    logger, where ZenML captures a step's log, get a filter), so a revealed path never reaches a stored log."""
    if not names:
        yield
        return

    class _Mask(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg, record.args = mask(record.getMessage(), names, env), None
            return True

    handlers = list(logging.getLogger().handlers)
    masker = _Mask()
    for handler in handlers:
        handler.addFilter(masker)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(masker)
