"""MLflow model registry I/O for ``medloc-grounder``: log the model folder (weights + processor) as a pyfunc
from code (``served_model.py``), register it with its evaluation record (metrics on the MLflow 3 logged model:
``eval/...``, the base model's ``eval_base/...``; the evaluation-set hash, run id and answer style as version tags)
and alias ``challenger``; read a version's metrics back; resolve ``models:/`` URIs; retire versions a killed run
left incomplete. The gate that moves ``champion`` is ``gate.py`` (decision) and ``promote.py`` (the move).

MLflow rejects ``@`` in metric names, so ``eval/A@0.5`` is stored as ``eval/A_at_0.5`` (``evaluation.metrics.
mlflow_key``) and read back with the inverse mapping. Versions registered before the metrics moved to the logged
model (and hand-made ones) carry them as version tags; :func:`version_metrics` reads those too.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from medloc_core.evaluation.metrics import mlflow_key
from medloc_core.registry.serving import MODEL_ARTIFACT, input_example, pip_requirements, signature
from medloc_core.tracking import configure_mlflow

logger = logging.getLogger(__name__)

MODEL_NAME = "medloc-grounder"
CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "medloc"
DEFAULT_METRIC = "eval/A@0.5"

TAG_EVAL_SET_HASH = "medloc.eval_set_hash"
TAG_RUN_ID = "medloc.run_id"
TAG_DECISION = "medloc.promotion.decision"
TAG_REASONS = "medloc.promotion.reasons"
TAG_ANSWER_STYLE = "medloc.answer_style"
BASE_PREFIX = "base/"  # base-model metrics as version tags (older versions): ``base/eval/...``
BASE_METRIC_PREFIX = "eval_base/"  # base-model metrics on the logged model, named as in the run
METRIC_TAG_PREFIX = "eval/"
_MAX_TAG_VALUE = 5000


# ---------------------------------------------------------------------------------- registry helpers


def _client(client: Any = None) -> Any:
    from mlflow import MlflowClient

    return client if client is not None else MlflowClient()


def metrics_to_tags(
    metrics: Mapping[str, Any], prefix: str = "", *, include_ci: bool = False
) -> dict[str, str]:
    """Version tags for metric values (``@`` mapped by ``mlflow_key``); NaN and non-numbers are skipped.

    Bootstrap bounds (``*_ci_low``/``*_ci_high``) are left out unless ``include_ci``: one registry call per tag,
    and the run holds them anyway.
    """
    tags = {}
    for key, value in metrics.items():
        if not include_ci and (key.endswith("_ci_low") or key.endswith("_ci_high")):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isnan(number):
            continue
        tags[prefix + mlflow_key(key)] = repr(number)
    return tags


def tags_to_metrics(tags: Mapping[str, str], prefix: str = "") -> dict[str, float]:
    """Inverse of :func:`metrics_to_tags` for ``eval/...`` tags (``_at_`` back to ``@``)."""
    out = {}
    for key, value in tags.items():
        if not key.startswith(prefix + METRIC_TAG_PREFIX):
            continue
        try:
            out[key[len(prefix) :].replace("_at_", "@")] = float(value)
        except ValueError:
            continue
    return out


def get_alias_version(alias: str, *, client: Any = None, name: str = MODEL_NAME) -> Any | None:
    """The model version behind ``alias``, or None when the alias (or the model) does not exist."""
    client = _client(client)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def log_model_metrics(
    model_id: str, run_id: str, metrics: Mapping[str, Any], *, base: bool = False, client: Any = None
) -> None:
    """Log ``eval/...`` metrics (finite numbers) as metrics of the logged model ``model_id`` (and of its source
    run ``run_id``); ``base=True`` names them ``eval_base/...``, the base model's."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        if not key.startswith(METRIC_TAG_PREFIX) or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            name = mlflow_key(key.replace(METRIC_TAG_PREFIX, BASE_METRIC_PREFIX, 1) if base else key)
            batch.append(Metric(name, number, now, 0, model_id=model_id))
    if batch:
        _client(client).log_batch(run_id, metrics=batch)


def logged_model_id(version: Any) -> str | None:
    """The MLflow 3 logged model behind a registry version (its ``source`` is ``models:/<model id>``), or None
    for a version registered from a run's artifacts."""
    model_id = getattr(version, "model_id", None)
    source = str(getattr(version, "source", "") or "")
    if not model_id and source.startswith("models:/m-"):
        model_id = source[len("models:/") :].split("/", 1)[0]
    return model_id or None


def version_metrics(
    version: Any, client: Any = None
) -> tuple[dict[str, float], dict[str, float], str | None]:
    """``(eval metrics, base-model metrics, eval-set hash)`` of a model version: the metrics of its MLflow 3
    logged model (the latest value of each key), else its version tags."""
    tags = dict(version.tags or {})
    model_id = logged_model_id(version)
    latest: dict[str, tuple[int, float]] = {}
    if model_id:
        for metric in _client(client).get_logged_model(model_id).metrics or []:
            if metric.key not in latest or metric.timestamp >= latest[metric.key][0]:
                latest[metric.key] = (metric.timestamp, metric.value)
    if not any(key.startswith(METRIC_TAG_PREFIX) for key in latest):
        return tags_to_metrics(tags), tags_to_metrics(tags, BASE_PREFIX), tags.get(TAG_EVAL_SET_HASH)
    values = {key.replace("_at_", "@"): value for key, (_, value) in latest.items()}
    own = {key: value for key, value in values.items() if key.startswith(METRIC_TAG_PREFIX)}
    base = {
        METRIC_TAG_PREFIX + key[len(BASE_METRIC_PREFIX) :]: value
        for key, value in values.items()
        if key.startswith(BASE_METRIC_PREFIX)
    }
    return own, base, tags.get(TAG_EVAL_SET_HASH)


def _ensure_experiment() -> None:
    if mlflow.active_run() is not None:
        return
    try:
        configure_mlflow(EXPERIMENT)
    except ImportError:  # tracking helper not available: plain MLflow experiment
        mlflow.set_experiment(EXPERIMENT)


def log_and_register(
    model_dir: str | os.PathLike,
    metrics: Mapping[str, Any],
    *,
    run_id: str | None = None,
    eval_set_hash: str,
    base_metrics: Mapping[str, Any] | None = None,
    answer_style: str = "think",
    max_new_tokens: int = 128,
    default_query: str | None = None,
    client: Any = None,
) -> int:
    """Log ``model_dir`` (a saved Qwen2.5-VL folder with its processor) as a pyfunc and register it.

    Runs in ``run_id`` if given, else in the active run, else in a new run of experiment ``medloc``. The new
    version of ``medloc-grounder`` gets alias ``challenger`` and tags: the evaluation ``metrics`` (and
    ``base_metrics`` under ``base/``), ``medloc.eval_set_hash`` and ``medloc.run_id``. ``default_query``: the
    query the served model answers when a request has none (the one it was trained with). Returns the version
    number.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").is_file():
        raise ValueError(f"{model_dir} is not a saved model folder (no config.json or adapter_config.json)")
    if not eval_set_hash:
        raise ValueError(
            "eval_set_hash is required: promotion compares versions only on the same evaluation set"
        )
    client = _client(client)
    active = mlflow.active_run()
    if run_id is not None and (active is None or active.info.run_id != run_id):
        ctx = mlflow.start_run(run_id=run_id, nested=active is not None)
    elif active is not None:
        ctx = None
    else:
        _ensure_experiment()
        ctx = mlflow.start_run(run_name="register-medloc-grounder")
    try:
        run = ctx.__enter__() if ctx is not None else active
        # Models-from-code (no pickle): the model is served_model.py plus this package as code_paths, so a
        # fresh environment built from the model's own requirements can load and serve it. MLflow loads it
        # and scores the input example once while logging: a registered model is known to answer.
        package = Path(__file__).resolve().parents[1]  # medloc_core/
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "registry" / "served_model.py"),
            model_config={
                "answer_style": answer_style,
                "max_new_tokens": max_new_tokens,
                "default_query": default_query or "",
            },
            code_paths=[str(package)],
            artifacts={MODEL_ARTIFACT: str(model_dir)},
            signature=signature(),
            # without a default query the example carries one; with it, the example shows that none is needed
            input_example=input_example(None if default_query else "Where is the lesion?"),
            pip_requirements=pip_requirements(),
        )
        logged_run_id = run.info.run_id
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    # The metrics live on the logged model (MLflow 3: the model page lists them, linked to the run), not as tags;
    # they are written before the version exists and its record comes with it (one call), so a process killed
    # in between never leaves a version that the gate cannot compare.
    log_model_metrics(info.model_id, logged_run_id, metrics, client=client)
    log_model_metrics(info.model_id, logged_run_id, base_metrics or {}, base=True, client=client)
    tags = {TAG_EVAL_SET_HASH: eval_set_hash, TAG_RUN_ID: logged_run_id, TAG_ANSWER_STYLE: answer_style}
    mv = mlflow.register_model(info.model_uri, MODEL_NAME, tags=tags)
    version = int(mv.version)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, str(version))
    logger.info(
        "registered %s version %d (alias %s) from run %s", MODEL_NAME, version, CHALLENGER, logged_run_id
    )
    return version


def retire_incomplete_versions(*, client: Any = None, name: str = MODEL_NAME) -> list[str]:
    """Settle the versions a killed run left half-registered; returns one log line per version changed.

    A version without its evaluation record (``medloc.eval_set_hash``) can never be compared by the gate: it
    is deleted. A version with its record but no gate decision (killed before the gate ran) is finished as
    ``interrupted`` (not promoted; ``medloc promote --version N`` can still decide it). Only versions whose run
    is no longer ``RUNNING`` are touched: a live run may be between these calls right now.
    """
    client = _client(client)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    lines = []
    for mv in versions:
        tags = dict(mv.tags or {})
        if TAG_EVAL_SET_HASH in tags and TAG_DECISION in tags:
            continue
        try:
            status = client.get_run(mv.run_id).info.status if mv.run_id else "UNKNOWN"
        except MlflowException:
            status = "DELETED"
        if status == "RUNNING":
            continue
        if TAG_EVAL_SET_HASH not in tags:
            client.delete_model_version(name, str(mv.version))
            lines.append(
                f"removed {name} version {mv.version}: its run ({status}) ended before the evaluation record "
                "was written, so no gate could ever compare it"
            )
            continue
        client.set_model_version_tag(name, str(mv.version), TAG_DECISION, "interrupted")
        client.set_model_version_tag(
            name,
            str(mv.version),
            TAG_REASONS,
            f"its run ({status}) ended before the promotion gate ran; not promoted",
        )
        lines.append(f"finished {name} version {mv.version} as 'interrupted': its run ended before the gate")
    for line in lines:
        logger.warning(line)
    return lines


class NoModelAtAliasError(LookupError):
    """``models:/NAME@ALIAS`` names an alias that is not set (e.g. no version has become champion yet)."""


def require_alias(model: str, *, client: Any = None) -> None:
    """Raise :class:`NoModelAtAliasError` with a one-line, actionable message when ``model`` is a
    ``models:/NAME@ALIAS`` URI whose alias is not set; do nothing for any other reference."""
    text = str(model)
    if not text.startswith("models:/") or "@" not in text:
        return
    name, alias = text[len("models:/") :].rsplit("@", 1)
    if get_alias_version(alias, client=client, name=name) is not None:
        return
    hint = f"no {name} version has alias @{alias} yet"
    if alias == CHAMPION:
        hint = (
            f"no champion yet: no {name} version has passed the promotion gate. Use the newest version with "
            f"--model models:/{name}@{CHALLENGER}, or promote one with `medloc promote`"
        )
    raise NoModelAtAliasError(hint)


def is_model_uri(model: str) -> bool:
    """True for MLflow model references (``models:/``, ``runs:/``, ``mlflow-artifacts:/``) or a local pyfunc folder."""
    if model.split(":", 1)[0] in ("models", "runs", "mlflow-artifacts") and ":/" in model:
        return True
    return (Path(model) / "MLmodel").is_file()


def resolve_model_dir(model: str | os.PathLike, *, dst: str | os.PathLike | None = None) -> Path:
    """The Hugging Face model folder behind ``model``: a local folder as is, or the ``model`` artifact of a
    logged ``medloc-grounder`` pyfunc (``models:/medloc-grounder@champion``, ``runs:/...``), downloaded first."""
    import yaml

    text = str(model)
    require_alias(text)
    if not is_model_uri(text):
        path = Path(text)
        if not path.is_dir():
            raise FileNotFoundError(
                f"model {text!r} is neither a folder nor an MLflow model URI (models:/NAME@ALIAS)"
            )
        return path
    local = (
        Path(text)
        if (Path(text) / "MLmodel").is_file()
        else Path(
            mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=None if dst is None else str(dst))
        )
    )
    conf = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8")) or {}
    artifacts = ((conf.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
    entry = artifacts.get(MODEL_ARTIFACT)
    if not entry or "path" not in entry:
        raise ValueError(
            f"{text}: not a {MODEL_NAME} pyfunc model (no '{MODEL_ARTIFACT}' artifact in its MLmodel)"
        )
    return local / entry["path"]


#: Where the evaluate step logs the rows it evaluated (the prepared table's eval split), in the pipeline run.
EVAL_TABLE_ARTIFACT = "evaluation/eval_set.parquet"


def source_run_id(model: str, *, client: Any = None) -> str:
    """The pipeline run behind ``model``: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/...``
    or a bare run id."""
    text = str(model)
    if text.startswith("runs:/"):
        return text.removeprefix("runs:/").split("/", 1)[0]
    if not text.startswith("models:/"):
        return text
    client = _client(client)
    name, _, ref = text.removeprefix("models:/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        require_alias(text, client=client)
    try:
        version = (
            client.get_model_version_by_alias(name, alias)
            if "@" in text
            else client.get_model_version(name, ref)
        )
    except MlflowException:
        raise FileNotFoundError(f"{model}: no such registered model version") from None
    return version.tags.get(TAG_RUN_ID) or version.run_id


def evaluation_table(model: str, dst: str | os.PathLike, *, client: Any = None) -> Path:
    """Download the table the pipeline run behind ``model`` evaluated (:data:`EVAL_TABLE_ARTIFACT`) into ``dst``;
    a one-line :class:`FileNotFoundError` when that run logged none (runs before it was logged, or no run)."""
    if Path(str(model)).exists():
        raise FileNotFoundError(
            f"{model}: a local model folder has no pipeline run to take the table from; pass --data"
        )
    run_id = source_run_id(model, client=client)
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=EVAL_TABLE_ARTIFACT, dst_path=str(dst)
        )
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(
            f"{model}: run {run_id} has no {EVAL_TABLE_ARTIFACT} ({first[:200]}); pass --data"
        ) from None
    return Path(path)
