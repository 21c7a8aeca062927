"""Moving the ``champion`` alias: register a version and run the gate on it, or re-run the gate by hand, as one
read-decide-move under a file lock (the pure decision is ``gate.py``)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow

from medloc_core.registry import versions
from medloc_core.registry.card import CARD_HEADING
from medloc_core.registry.gate import TAG_SKIPPED, PromotionDecision, decide_promotion, registration_blockers
from medloc_core.registry.versions import (
    _MAX_TAG_VALUE,
    BASE_PREFIX,
    CHALLENGER,
    CHAMPION,
    DEFAULT_METRIC,
    MODEL_NAME,
    TAG_DECISION,
    TAG_REASONS,
    _client,
    get_alias_version,
    log_model_metrics,
    logged_model_id,
    metrics_to_tags,
    version_metrics,
)

logger = logging.getLogger(__name__)


def _record_decision(client: Any, version: int, decision: PromotionDecision, *, forced: bool) -> None:
    verdict = ("promoted" if decision.promote else "rejected") + (" (forced)" if forced else "")
    # A readable description on the version page: the verdict and the gate's reasons, then the model card
    # (registry/card.py) if the version has one.
    gate = f"Promotion gate: {verdict} to {CHAMPION}. " + " ".join(
        r.rstrip(".") + "." for r in decision.reasons
    )
    current = client.get_model_version(MODEL_NAME, str(version)).description or ""
    _, sep, card = current.partition(CARD_HEADING)
    client.update_model_version(
        MODEL_NAME, str(version), description=gate + (f"\n\n{sep}{card}" if sep else "")
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
    require_significant_gain: bool = True,
    force: bool = False,
    reevaluate: Callable[[Any], Mapping[str, Any]] | None = None,
    base_metrics: Mapping[str, Any] | None = None,
) -> PromotionDecision:
    """Promote model ``version`` to alias ``champion`` if :func:`decide_promotion` says so.

    Read (champion), decide and move (alias) run as one operation under :func:`promotion_lock`, so two
    promotions at once cannot both decide against the same old champion. After moving, the champion alias is
    read again: if another process moved it meanwhile (a writer the lock cannot see), the two are compared with
    the same gate and the better one is put back (at most a few rounds). The candidate's metrics, base-model
    metrics (those of its logged model) and evaluation-set hash (a version tag) come from
    :func:`log_and_register`. The
    champion's metrics are trusted only when its evaluation-set hash equals the candidate's; otherwise
    ``reevaluate(champion_model_version) -> metrics`` is called when given (it must evaluate the champion on
    the candidate's set), else the candidate is refused with that reason. ``base_metrics`` (the base model on
    the same set) replaces the base metrics stored at registration and is stored with the version's metrics.
    ``require_significant_gain`` also asks for a paired gain over the base whose 95 % lower bound is > 0
    (:func:`decide_promotion`). ``force`` promotes regardless (the reasons say what the gate would have decided). The decision is stored
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
            require_significant_gain=require_significant_gain,
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
        mine, _, my_hash = version_metrics(client.get_model_version(MODEL_NAME, str(version)), client)
        theirs, _, their_hash = version_metrics(current, client)
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
    require_significant_gain: bool,
    force: bool,
    reevaluate: Callable[[Any], Mapping[str, Any]] | None,
    base_metrics: Mapping[str, Any] | None,
) -> PromotionDecision:
    """Read the champion, decide and move the alias (the caller holds :func:`promotion_lock`)."""
    client = _client(client)
    version = int(version)
    candidate = client.get_model_version(MODEL_NAME, str(version))
    cand_metrics, stored_base, cand_hash = version_metrics(candidate, client)
    if base_metrics is not None:  # stored with the version's own metrics for the next decision
        model_id = logged_model_id(candidate)
        if model_id:
            run_id = client.get_logged_model(model_id).source_run_id or candidate.run_id
            log_model_metrics(model_id, run_id, base_metrics, base=True, client=client)
        else:
            for key, value in metrics_to_tags(base_metrics, BASE_PREFIX).items():
                client.set_model_version_tag(MODEL_NAME, str(version), key, value)
    else:
        base_metrics = stored_base
    champion = get_alias_version(CHAMPION, client=client)

    decision: PromotionDecision
    if champion is not None and int(champion.version) == version:
        # Nothing to decide: the champion's recorded decision (why it became champion) is left as it is.
        return PromotionDecision(False, [f"version {version} is already the champion"], unchanged=True)
    champ_metrics: dict[str, Any] | None = None
    notes: list[str] = []
    comparable = True
    if champion is not None:
        champ_metrics, _, champ_hash = version_metrics(champion, client)
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
            require_significant_gain=require_significant_gain,
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


def register_and_promote(
    model_dir: Any,
    metrics: Mapping[str, Any],
    base_metrics: Mapping[str, Any] | None,
    *,
    run_id: str,
    eval_set_hash: str,
    answer_style: str,
    max_new_tokens: int,
    history_tail: list[Mapping[str, Any]],
    settings: Any,
    default_query: str | None = None,
) -> dict[str, Any]:
    """A pipeline run's registration: refuse a broken model (``registration_blockers``, tagged on the
    run), else register it as ``challenger`` (served with the prompt style and generation length it was
    evaluated with) and pass it through the gate. ``settings`` is a ``run_config.RegistrationConfig``;
    ``default_query`` is served when a request has no query. Returns ``{registered, promoted, reasons[,
    model_name, version]}``."""
    if not settings.register_model:
        return {"registered": False, "promoted": False, "reasons": ["registration disabled by config"]}
    blockers = registration_blockers(metrics, history_tail)
    if blockers:
        mlflow.set_tag(TAG_SKIPPED, "; ".join(blockers))
        logger.warning("Registration skipped, the model is broken: %s", "; ".join(blockers))
        return {"registered": False, "promoted": False, "reasons": blockers}
    version = versions.log_and_register(
        model_dir,
        metrics,
        run_id=run_id,
        eval_set_hash=eval_set_hash,
        base_metrics=base_metrics or None,
        answer_style=answer_style,
        max_new_tokens=max_new_tokens,
        default_query=default_query,
    )
    decision = promote_if_better(
        version,
        margin=settings.margin,
        metric=settings.metric,
        require_beats_base=settings.require_beats_base,
        require_significant_gain=settings.require_significant_gain,
        base_metrics=base_metrics or None,
    )
    return {
        "registered": True,
        "model_name": MODEL_NAME,
        "version": int(version),
        "promoted": bool(decision.promote),
        "reasons": list(decision.reasons),
    }
