"""MLflow model registry: the ``medloc-grounder`` pyfunc model, registration, and the promotion gate.

* :func:`decide_promotion` is the pure rule: promote a candidate to ``champion`` only if it beats the base
  model and beats the current champion by more than a margin on the same metric.
* :class:`MedLocGrounderModel` is the MLflow pyfunc that predicts boxes from ``image`` + ``query`` columns.
* :func:`log_and_register` logs the model folder (weights + processor) as a pyfunc, registers it as
  ``medloc-grounder``, sets alias ``challenger`` and stores the evaluation metrics and the evaluation-set hash as
  version tags.
* :func:`promote_if_better` applies the rule against the current champion's tags, records the decision and
  moves alias ``champion`` when it passes.

Metric values are in the units of :mod:`medloc_core.evaluation` (A@τ and pseudo-mAP in percent, mIoU 0-1).
MLflow rejects ``@`` in tag names, so metric ``eval/A@0.5`` is stored as tag ``eval/A_at_0.5``
(``evaluation.mlflow_key``) and read back with the inverse mapping. Predicted boxes are ``(x1, y1, x2, y2)`` in
original-image pixels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from medloc_core.evaluation import mlflow_key
from medloc_core.serving import (  # noqa: F401  (re-exported: the served model's public names)
    MODEL_ARTIFACT,
    OUTPUT_COLUMNS,
    BadRequest,
    MedLocGrounderModel,
    _input_example,
    _pip_requirements,
    _signature,
    encode_image,
    load_image,
)

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
BASE_PREFIX = "base/"  # base-model metrics are stored as tags ``base/eval/...``
METRIC_TAG_PREFIX = "eval/"
_MAX_TAG_VALUE = 5000


# ------------------------------------------------------------------------------------- promotion rule


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to promote, and why (one human-readable sentence per check, in order)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)


def _metric_value(metrics: Mapping[str, Any] | None, metric: str) -> float | None:
    if metrics is None or metric not in metrics:
        return None
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None  # NaN or ±inf is a broken evaluation, never a winner


def decide_promotion(
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    base: Mapping[str, Any] | None,
    *,
    metric: str = DEFAULT_METRIC,
    margin: float = 0.0,
    require_beats_base: bool = True,
) -> PromotionDecision:
    """The promotion gate, as a pure function of metric dicts (keys as in ``evaluation.evaluate_ious``).

    Promote iff all hold:

    1. the candidate has a finite ``metric``;
    2. with ``require_beats_base``: the base model has the metric and ``candidate > base`` (strictly);
    3. there is no champion, or the champion has the metric and ``candidate - champion > margin`` (strictly, so a
       tie never replaces the champion; ``margin`` is in the metric's units, e.g. percentage points for A@0.5).

    A champion without the metric is not comparable: the candidate is refused (re-evaluate or force).
    """
    if margin < 0 or math.isnan(margin):
        raise ValueError(f"margin must be >= 0, got {margin}")
    reasons: list[str] = []
    cand = _metric_value(candidate, metric)
    if cand is None:
        raw = (candidate or {}).get(metric)
        what = f"a non-finite value ({raw})" if raw is not None else "no value"
        return PromotionDecision(False, [f"candidate has {what} for {metric}"])
    if require_beats_base:
        base_value = _metric_value(base, metric)
        if base_value is None:
            return PromotionDecision(
                False, [f"base model has no value for {metric}; cannot check that the candidate beats it"]
            )
        if not cand > base_value:
            return PromotionDecision(
                False, [f"candidate {metric}={cand:.4g} does not beat the base model ({base_value:.4g})"]
            )
        reasons.append(f"candidate {metric}={cand:.4g} beats the base model ({base_value:.4g})")
    if champion is None:
        reasons.append("there is no current champion")
        return PromotionDecision(True, reasons)
    champ = _metric_value(champion, metric)
    if champ is None:
        reasons.append(f"the current champion has no value for {metric}; not comparable")
        return PromotionDecision(False, reasons)
    gain = cand - champ
    if gain > margin:
        reasons.append(
            f"candidate {metric}={cand:.4g} beats the champion ({champ:.4g}) by {gain:.4g} > margin {margin:g}"
        )
        return PromotionDecision(True, reasons)
    reasons.append(
        f"candidate {metric}={cand:.4g} does not beat the champion ({champ:.4g}) by more than margin {margin:g} "
        f"(difference {gain:.4g})"
    )
    return PromotionDecision(False, reasons)


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


def version_metrics(version: Any) -> tuple[dict[str, float], dict[str, float], str | None]:
    """``(eval metrics, base-model metrics, eval-set hash)`` stored on a model version's tags."""
    tags = dict(version.tags or {})
    return tags_to_metrics(tags), tags_to_metrics(tags, BASE_PREFIX), tags.get(TAG_EVAL_SET_HASH)


def _ensure_experiment() -> None:
    if mlflow.active_run() is not None:
        return
    try:
        from medloc_core.tracking import configure_mlflow

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
    client: Any = None,
) -> int:
    """Log ``model_dir`` (a saved Qwen2.5-VL folder with its processor) as a pyfunc and register it.

    Runs in ``run_id`` if given, else in the active run, else in a new run of experiment ``medloc``. The new
    version of ``medloc-grounder`` gets alias ``challenger`` and tags: the evaluation ``metrics`` (and
    ``base_metrics`` under ``base/``), ``medloc.eval_set_hash`` and ``medloc.run_id``. Returns the version number.
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
        # Models-from-code (no pickle): the model is serving_model.py plus this package as code_paths, so a
        # fresh environment built from the model's own requirements can load and serve it. MLflow loads it
        # and scores the input example once while logging: a registered model is known to answer.
        package = Path(__file__).resolve().parent
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "serving_model.py"),
            model_config={"answer_style": answer_style, "max_new_tokens": max_new_tokens},
            code_paths=[str(package)],
            artifacts={MODEL_ARTIFACT: str(model_dir)},
            signature=_signature(),
            input_example=_input_example(),
            pip_requirements=_pip_requirements(),
        )
        logged_run_id = run.info.run_id
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    mv = mlflow.register_model(info.model_uri, MODEL_NAME)
    version = int(mv.version)
    tags = {
        TAG_EVAL_SET_HASH: eval_set_hash,
        TAG_RUN_ID: logged_run_id,
        TAG_ANSWER_STYLE: answer_style,
        **metrics_to_tags(metrics),
        **metrics_to_tags(base_metrics or {}, BASE_PREFIX),
    }
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, str(version), key, value)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, str(version))
    logger.info(
        "registered %s version %d (alias %s) from run %s", MODEL_NAME, version, CHALLENGER, logged_run_id
    )
    return version


def _record_decision(client: Any, version: int, decision: PromotionDecision, *, forced: bool) -> None:
    verdict = ("promoted" if decision.promote else "rejected") + (" (forced)" if forced else "")
    # A readable description on the version page: the verdict and the gate's reasons.
    client.update_model_version(
        MODEL_NAME,
        str(version),
        description=f"Promotion gate: {verdict} to {CHAMPION}. "
        + " ".join(r.rstrip(".") + "." for r in decision.reasons),
    )
    client.set_model_version_tag(MODEL_NAME, str(version), TAG_DECISION, verdict)
    client.set_model_version_tag(
        MODEL_NAME, str(version), TAG_REASONS, "; ".join(decision.reasons)[:_MAX_TAG_VALUE]
    )
    if mlflow.active_run() is not None:
        text = f"{MODEL_NAME} version {version}: {verdict}\n" + "".join(f"- {r}\n" for r in decision.reasons)
        mlflow.log_text(text, f"promotion/version_{version}.txt")


@contextlib.contextmanager
def promotion_lock(timeout_s: float = 300.0):
    """Serialise read-decide-move across processes: an exclusive ``flock`` on a file next to the local
    tracking store (``sqlite:///x.db`` -> ``x.db.promotion.lock``; a file store -> ``<dir>/.promotion.lock``);
    for a remote server, a per-server file under ``~/.cache/medloc`` (serialises promotions on one host; across
    hosts the re-check after moving in :func:`promote_if_better` is what keeps the better model)."""
    import fcntl
    import hashlib

    uri = mlflow.get_registry_uri() or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :] + ".promotion.lock")
    elif uri.startswith("file:") or "://" not in uri:
        path = Path(uri.removeprefix("file://").removeprefix("file:")) / ".promotion.lock"
    else:
        digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
        path = Path(os.path.expanduser("~/.cache/medloc")) / f"promotion-{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another promotion holds {path} for over {timeout_s:.0f} s") from None
                time.sleep(0.05)
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def promote_if_better(
    version: int | str,
    *,
    margin: float = 0.0,
    metric: str = DEFAULT_METRIC,
    client: Any = None,
    require_beats_base: bool = True,
    force: bool = False,
    reevaluate: Callable[[Any], Mapping[str, Any]] | None = None,
    base_metrics: Mapping[str, Any] | None = None,
) -> PromotionDecision:
    """Promote model ``version`` to alias ``champion`` if :func:`decide_promotion` says so.

    Read (champion), decide and move (alias) run as one operation under :func:`promotion_lock`, so two
    promotions at once cannot both decide against the same old champion. After moving, the champion alias is
    read again: if another process moved it meanwhile (a writer the lock cannot see), the two are compared with
    the same gate and the better one is put back (at most a few rounds). The candidate's metrics, base-model
    metrics and evaluation-set hash come from its version tags (written by :func:`log_and_register`). The
    champion's metrics are trusted only when its evaluation-set hash equals the candidate's; otherwise
    ``reevaluate(champion_model_version) -> metrics`` is called when given (it must evaluate the champion on
    the candidate's set), else the candidate is refused with that reason. ``base_metrics`` (the base model on
    the same set) replaces the ``base/`` tags stored at registration and is then stored on the version too.
    ``force`` promotes regardless (the reasons say what the gate would have decided). The decision is stored
    as version tags ``medloc.promotion.decision`` / ``medloc.promotion.reasons`` and, in an active run, as the
    text artifact ``promotion/version_<N>.txt``.
    """
    client = _client(client)
    with promotion_lock():
        decision = _promote_locked(
            version,
            margin=margin,
            metric=metric,
            client=client,
            require_beats_base=require_beats_base,
            force=force,
            reevaluate=reevaluate,
            base_metrics=base_metrics,
        )
        if decision.promote and not force:
            _recheck_after_move(int(version), client, metric=metric, margin=margin)
    return decision


def _recheck_after_move(version: int, client: Any, *, metric: str, margin: float, rounds: int = 3) -> None:
    """If the champion alias no longer points at ``version`` (moved by a process outside our lock), keep
    whichever of the two the gate prefers."""
    for _ in range(rounds):
        time.sleep(0.2)
        current = get_alias_version(CHAMPION, client=client)
        if current is None or int(current.version) == version:
            return
        mine, _, my_hash = version_metrics(client.get_model_version(MODEL_NAME, str(version)))
        theirs, _, their_hash = version_metrics(current)
        if my_hash != their_hash:
            return  # not comparable here; the other promotion's own gate decided
        gate = decide_promotion(mine, theirs, None, metric=metric, margin=margin, require_beats_base=False)
        if not gate.promote:
            return
        logger.warning(
            "champion moved to version %s during the promotion of version %d, which is better: moving it back",
            current.version,
            version,
        )
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(version))


def _promote_locked(
    version: int | str,
    *,
    margin: float,
    metric: str,
    client: Any,
    require_beats_base: bool,
    force: bool,
    reevaluate: Callable[[Any], Mapping[str, Any]] | None,
    base_metrics: Mapping[str, Any] | None,
) -> PromotionDecision:
    """Read the champion, decide and move the alias (the caller holds :func:`promotion_lock`)."""
    client = _client(client)
    version = int(version)
    candidate = client.get_model_version(MODEL_NAME, str(version))
    cand_metrics, stored_base, cand_hash = version_metrics(candidate)
    if base_metrics is not None:
        for key, value in metrics_to_tags(base_metrics, BASE_PREFIX).items():
            client.set_model_version_tag(MODEL_NAME, str(version), key, value)
    else:
        base_metrics = stored_base
    champion = get_alias_version(CHAMPION, client=client)

    decision: PromotionDecision
    if champion is not None and int(champion.version) == version:
        decision = PromotionDecision(False, [f"version {version} is already the champion"])
        _record_decision(client, version, decision, forced=False)
        return decision
    champ_metrics: dict[str, Any] | None = None
    notes: list[str] = []
    comparable = True
    if champion is not None:
        champ_metrics, _, champ_hash = version_metrics(champion)
        notes.append(f"current champion is version {champion.version}")
        if champ_hash != cand_hash:
            if reevaluate is not None:
                champ_metrics = dict(reevaluate(champion))
                notes.append(
                    f"champion was evaluated on set {champ_hash}, candidate on {cand_hash}: re-evaluated the champion"
                )
            else:
                comparable = False
                notes.append(
                    f"champion was evaluated on eval set {champ_hash}, candidate on {cand_hash}: its numbers are "
                    "not comparable; re-evaluate the champion on this set or promote with --force"
                )
    if comparable:
        gate = decide_promotion(
            cand_metrics,
            champ_metrics if champion is not None else None,
            base_metrics,
            metric=metric,
            margin=margin,
            require_beats_base=require_beats_base,
        )
    else:
        gate = PromotionDecision(False, [])
    decision = PromotionDecision(gate.promote, notes + gate.reasons)
    if force and not decision.promote:
        decision = PromotionDecision(True, ["forced by the operator; the gate said:", *decision.reasons])
    _record_decision(client, version, decision, forced=force and not gate.promote)
    if decision.promote:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(version))
        logger.info("promoted %s version %d to %s", MODEL_NAME, version, CHAMPION)
    else:
        logger.info(
            "kept %s version %d as %s: %s", MODEL_NAME, version, CHALLENGER, "; ".join(decision.reasons)
        )
    return decision


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


# Registration gate: a model this broken is never registered (it would only move @challenger to garbage).
MAX_PARSE_FAILURE_RATE = 0.9
DEAD_TAIL_STEPS = 10
TAG_SKIPPED = "medloc.registration.skipped"


def registration_blockers(metrics: Mapping[str, Any], history: list[Mapping[str, Any]]) -> list[str]:
    """Why the evaluated model must not be registered (empty list: register it).

    ``metrics``: the evaluation (``eval/parse_failure_rate`` in [0, 1]); ``history``: the per-step training
    rows (``train/frac_reward_zero_std``, the share of GRPO groups whose rewards all tie).
    """
    reasons = []
    rate = _metric_value(metrics, "eval/parse_failure_rate")
    if rate is not None and rate >= MAX_PARSE_FAILURE_RATE:
        reasons.append(
            f"the model's answers failed to parse on {rate:.0%} of the test images "
            f"(limit {MAX_PARSE_FAILURE_RATE:.0%})"
        )
    tail = [r.get("train/frac_reward_zero_std") for r in history[-DEAD_TAIL_STEPS:]]
    tail = [float(v) for v in tail if v is not None and not math.isnan(float(v))]
    if tail and len(tail) == min(DEAD_TAIL_STEPS, len(history)) and min(tail) >= 1.0:
        reasons.append(
            f"every GRPO group was dead (all rewards tied, no gradient) over the last {len(tail)} training steps"
        )
    return reasons


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


def decision_json(decision: PromotionDecision) -> str:
    """The decision as one JSON line (for the CLI and step outputs)."""
    return json.dumps({"promote": decision.promote, "reasons": decision.reasons})
