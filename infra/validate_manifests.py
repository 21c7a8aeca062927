"""Validate Kubernetes manifests offline, with no cluster.

Two independent checks:

* ``validate_model``: map ``apiVersion``/``kind`` to the ``kubernetes`` Python client's model class and
  rebuild the object field by field. Unknown fields (typos such as ``contianers``), wrong primitive types and
  missing required fields (the models' client-side validation) raise ``ManifestError`` with the path of the
  field, e.g. ``infra/k8s/40-mlflow-server.yaml#1 (Deployment/mlflow): spec.template.spec.containers[0]:
  unknown field 'imagee'``.
* ``validate_schema``: the official OpenAPI-derived JSON schemas bundled by the PyPI package
  ``kubernetes-validate`` (strict mode: no additional properties), when that package is installed.

Usage: ``python infra/validate_manifests.py infra/k8s/*.yaml`` (exit status 1 on the first invalid file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

#: Kubernetes version the JSON-schema check targets.
K8S_VERSION = "1.30"


class ManifestError(ValueError):
    """A manifest failed validation; the message names the file, document, object and field."""


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    """All non-empty YAML documents of a manifest file, in order.

    Raises:
        ManifestError: unparsable YAML, or a document that is not a mapping with apiVersion/kind/metadata.name.
    """
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: invalid YAML: {exc}") from exc
    for index, doc in enumerate(docs):
        where = f"{path}#{index}"
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: a manifest must be a mapping, got {type(doc).__name__}")
        for key in ("apiVersion", "kind"):
            if not isinstance(doc.get(key), str):
                raise ManifestError(f"{where}: missing '{key}'")
        if not (doc.get("metadata") or {}).get("name"):
            raise ManifestError(f"{where} ({doc['kind']}): missing 'metadata.name'")
    return docs


def model_class_name(api_version: str, kind: str) -> str:
    """``apps/v1`` + ``Deployment`` -> ``V1Deployment``; ``rbac.authorization.k8s.io/v1`` + ``Role`` -> ``V1Role``."""
    version = api_version.rsplit("/", 1)[-1]
    return version[0].upper() + version[1:] + kind


_LIST = re.compile(r"^list\[(.*)\]$")
_DICT = re.compile(r"^dict\(([^,]*), (.*)\)$")
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "date": (str, dt.date),
    "datetime": (str, dt.datetime),
    "object": (object,),
}


def _build(value: Any, type_name: str, where: str) -> Any:
    import kubernetes.client.models as models

    if value is None:
        return None
    match = _LIST.match(type_name)
    if match:
        if not isinstance(value, list):
            raise ManifestError(f"{where}: expected a list, got {type(value).__name__}")
        return [_build(v, match.group(1), f"{where}[{i}]") for i, v in enumerate(value)]
    match = _DICT.match(type_name)
    if match:
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {k: _build(v, match.group(2), f"{where}.{k}") for k, v in value.items()}
    if type_name in _PRIMITIVES:
        wanted = _PRIMITIVES[type_name]
        # bool is an int in Python; Kubernetes does not accept true for an integer field.
        if not isinstance(value, wanted) or (type_name == "int" and isinstance(value, bool)):
            raise ManifestError(f"{where}: expected {type_name}, got {type(value).__name__} {value!r}")
        return value
    model = getattr(models, type_name, None)
    if model is None:
        raise ManifestError(f"{where}: unknown model type {type_name}")
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: expected a {type_name} mapping, got {type(value).__name__}")
    by_json_key = {json_key: attr for attr, json_key in model.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        if key not in by_json_key:
            raise ManifestError(f"{where}: unknown field '{key}' for {type_name}")
        attr = by_json_key[key]
        kwargs[attr] = _build(item, model.openapi_types[attr], f"{where}.{key}" if where else key)
    try:
        return model(**kwargs)
    except ValueError as exc:  # client-side validation: required fields, enums
        raise ManifestError(f"{where or '<root>'}: {exc}") from exc


def validate_model(doc: dict[str, Any], source: str = "<manifest>") -> Any:
    """Rebuild ``doc`` as its ``kubernetes`` client model (e.g. ``V1Deployment``) and return it.

    Raises:
        ManifestError: unsupported apiVersion/kind, unknown field, wrong type or missing required field.
    """
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    name = (doc.get("metadata") or {}).get("name", "?")
    class_name = model_class_name(str(api_version), str(kind))
    label = f"{source} ({kind}/{name})"
    import kubernetes.client.models as models

    if not hasattr(models, class_name):
        raise ManifestError(f"{label}: no Kubernetes model for apiVersion {api_version!r} kind {kind!r}")
    try:
        return _build(doc, class_name, "")
    except ManifestError as exc:
        raise ManifestError(f"{label}: {exc}") from None


def schema_validator_available() -> bool:
    """Whether the ``kubernetes-validate`` package (bundled JSON schemas) is installed."""
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        return False
    return True


def validate_schema(doc: dict[str, Any], source: str = "<manifest>", version: str = K8S_VERSION) -> None:
    """Validate ``doc`` against the Kubernetes JSON schema of ``version`` (strict: no unknown properties).

    Raises:
        ManifestError: the document does not match the schema.
        ImportError: ``kubernetes-validate`` is not installed.
    """
    import kubernetes_validate

    name = (doc.get("metadata") or {}).get("name", "?")
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise ManifestError(f"{source} ({doc.get('kind')}/{name}): {path}: {exc.message}") from None


def validate_file(path: str | Path, *, schema: bool | None = None) -> list[Any]:
    """Validate every document of a manifest file; returns the client model objects.

    ``schema=None`` runs the JSON-schema check when ``kubernetes-validate`` is installed.
    """
    use_schema = schema_validator_available() if schema is None else schema
    objects = []
    for index, doc in enumerate(load_manifests(path)):
        source = f"{path}#{index}"
        objects.append(validate_model(doc, source))
        if use_schema:
            validate_schema(doc, source)
    return objects


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python infra/validate_manifests.py",
        description="Validate Kubernetes manifests offline (no cluster): the client's models and, when "
        "kubernetes-validate is installed, the official schemas. Exit status 1 if any file is invalid.",
    )
    parser.add_argument("paths", nargs="+", metavar="MANIFEST.yaml", help="e.g. infra/k8s/*.yaml")
    paths: Iterable[str] = parser.parse_args(argv).paths
    status = 0
    for path in paths:
        try:
            objects = validate_file(path)
        except ManifestError as exc:
            print(f"INVALID {exc}", file=sys.stderr)
            status = 1
        else:
            kinds = ", ".join(f"{o.kind}/{o.metadata.name}" for o in objects)
            print(f"ok {path}: {kinds}")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ModuleNotFoundError as exc:  # run with a Python that lacks the project's packages
        sys.exit(
            f"{sys.argv[0]}: needs the project's Python ({exc.name} is missing): .venv/bin/python {sys.argv[0]} ..."
        )
