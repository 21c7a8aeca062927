"""Promotion rule (pure table), the pyfunc model, and registry + aliases against a REAL ``mlflow server``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import ANSWER_BOX, ANSWER_STYLE, QUERY, M, g, m, prepared_frame, random_image
from PIL import Image

from medloc_core.boxes import Frame
from medloc_core.registry import versions
from medloc_core.registry.promote import promote_if_better
from medloc_core.registry.serving import encode_image

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ decision table


def test_metric_tags_round_trip():
    metrics = {
        M: 61.5,
        "eval/ham/A@0.8": 12.0,
        "eval/mIoU": 0.4,
        "eval/A@0.5_ci_low": 50.0,
        "eval/x": math.nan,
    }
    tags = versions.metrics_to_tags(metrics)
    assert tags["eval/A_at_0.5"] == "61.5"
    assert "eval/x" not in tags
    assert "eval/A_at_0.5_ci_low" not in tags
    expected = {k: v for k, v in metrics.items() if k not in ("eval/x", "eval/A@0.5_ci_low")}
    assert versions.tags_to_metrics({**tags, "medloc.run_id": "abc"}) == expected
    with_ci = versions.metrics_to_tags(metrics, include_ci=True)
    assert versions.tags_to_metrics(with_ci)["eval/A@0.5_ci_low"] == 50.0
    base_tags = versions.metrics_to_tags({M: 3.0}, versions.BASE_PREFIX)
    assert base_tags == {"base/eval/A_at_0.5": "3.0"}
    assert versions.tags_to_metrics(base_tags, versions.BASE_PREFIX) == {M: 3.0}
    assert versions.tags_to_metrics(base_tags) == {}


def test_cli_constants_match_registry():
    from medloc_core.cli import registry as registry_cli

    assert registry_cli.MODEL_NAME == versions.MODEL_NAME == "medloc-grounder"
    assert registry_cli.CHAMPION == versions.CHAMPION == "champion"
    assert registry_cli.DEFAULT_METRIC == versions.DEFAULT_METRIC
    assert (versions.CHALLENGER, versions.EXPERIMENT) == ("challenger", "medloc")


# ------------------------------------------------------------------------------ against a real server


def _aliases(client) -> dict[str, int]:
    model = client.get_registered_model(versions.MODEL_NAME)
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


@pytest.mark.slow
def test_register_and_promote_on_real_server(server_env, answering_model_dir):  # noqa: F811
    import mlflow

    from medloc_core import cli

    client = server_env
    base = m(20.0)

    v1 = versions.log_and_register(
        answering_model_dir, g(60.0, **{"eval/mIoU": 0.5}), eval_set_hash="h1", base_metrics=base
    )
    assert v1 == 1
    assert _aliases(client) == {"challenger": 1}
    first = client.get_model_version(versions.MODEL_NAME, "1")
    tags = first.tags
    # the metrics are metrics of the MLflow 3 logged model (linked to the run), not string tags
    logged = {m.key: m.value for m in client.get_logged_model(versions.logged_model_id(first)).metrics}
    assert logged["eval/A_at_0.5"] == 60.0 and logged["eval_base/A_at_0.5"] == 20.0
    assert not any(key.startswith(("eval/", "base/")) for key in tags), tags
    assert versions.version_metrics(first, client)[:2] == (g(60.0, **{"eval/mIoU": 0.5}), base)
    assert tags[versions.TAG_EVAL_SET_HASH] == "h1"
    assert client.get_run(tags[versions.TAG_RUN_ID]).info.status == "FINISHED"

    d = promote_if_better(v1, client=client)
    assert d.promote and "there is no current champion" in d.reasons[-1]
    assert _aliases(client) == {"challenger": 1, "champion": 1}
    assert not promote_if_better(v1, client=client).promote  # already champion

    v2 = versions.log_and_register(answering_model_dir, g(60.5), eval_set_hash="h1", base_metrics=base)
    assert _aliases(client) == {"challenger": 2, "champion": 1}
    d = promote_if_better(v2, margin=1.0, client=client)
    assert not d.promote
    assert _aliases(client) == {"challenger": 2, "champion": 1}  # the gate failed: champion stays
    tags = client.get_model_version(versions.MODEL_NAME, "2").tags
    assert tags[versions.TAG_DECISION] == "rejected"
    assert "by more than margin 1" in tags[versions.TAG_REASONS]
    assert promote_if_better(v2, margin=0.25, client=client).promote
    assert _aliases(client) == {"challenger": 2, "champion": 2}

    # evaluated on another set: the champion's numbers are not trusted
    v3 = versions.log_and_register(answering_model_dir, g(90.0), eval_set_hash="h2", base_metrics=base)
    d = promote_if_better(v3, client=client)
    assert not d.promote and any("not comparable" in r for r in d.reasons)
    seen = []
    d = promote_if_better(v3, client=client, reevaluate=lambda mv: seen.append(mv.version) or m(95.0))
    assert not d.promote and seen == ["2"]
    with mlflow.start_run() as run:  # the decision is also logged as a text artifact of the active run
        d = promote_if_better(v3, client=client, reevaluate=lambda mv: m(50.0))
    assert d.promote and any("re-evaluated" in r for r in d.reasons)
    assert _aliases(client) == {"challenger": 3, "champion": 3}
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/promotion/version_3.txt")
    assert text.startswith("medloc-grounder version 3: promoted")

    # worse than the base model: refused, then forced by hand through `medloc promote`
    v4 = versions.log_and_register(answering_model_dir, m(10.0), eval_set_hash="h2")
    d = promote_if_better(v4, client=client)  # no base metrics stored: refused
    assert not d.promote and "base model has no value" in d.reasons[-1]
    d = promote_if_better(v4, client=client, base_metrics=base)  # given now (and stored)
    assert not d.promote and "does not beat the base model" in d.reasons[-1]
    assert versions.version_metrics(client.get_model_version(versions.MODEL_NAME, "4"), client)[1] == base
    assert cli.main(["promote", "--version", str(v4)]) == 1  # the gate rejected it: not a success
    assert _aliases(client) == {"challenger": 4, "champion": 3}
    assert cli.main(["promote", "--version", str(v4), "--force"]) == 0
    assert _aliases(client) == {"challenger": 4, "champion": 4}
    assert (
        client.get_model_version(versions.MODEL_NAME, "4").tags[versions.TAG_DECISION] == "promoted (forced)"
    )
    # promoting the champion again changes nothing and is no failure: its recorded decision stands
    assert cli.main(["promote", "--version", str(v4)]) == 0
    assert (
        client.get_model_version(versions.MODEL_NAME, "4").tags[versions.TAG_DECISION] == "promoted (forced)"
    )

    # a pipeline registration whose gain over its base could be noise: registered, but it stays challenger,
    # although it beats the champion by far, and the decision states the interval
    from medloc_core.registry.promote import register_and_promote
    from medloc_core.run_config import RegistrationConfig

    noisy = g(99.0, 3.4, -5.0, 12.6)
    result = register_and_promote(
        answering_model_dir, noisy, m(95.6), run_id=None, eval_set_hash="h2", answer_style=ANSWER_STYLE,
        max_new_tokens=40, history_tail=[], settings=RegistrationConfig(),
    )  # fmt: skip
    assert result["registered"] and not result["promoted"], result
    assert _aliases(client) == {"challenger": 5, "champion": 4}
    reasons = client.get_model_version(versions.MODEL_NAME, "5").tags[versions.TAG_REASONS]
    assert "not significant: eval/gain/A@0.5 = +3.4 [-5, +12.6]" in reasons, reasons
    # with the check off by config, the same evaluation passes the gate
    result = register_and_promote(
        answering_model_dir, noisy, m(95.6), run_id=None, eval_set_hash="h2", answer_style=ANSWER_STYLE,
        max_new_tokens=40, history_tail=[], settings=RegistrationConfig(require_significant_gain=False),
    )  # fmt: skip
    assert result["promoted"] and _aliases(client) == {"challenger": 6, "champion": 6}


@pytest.mark.slow
def test_pyfunc_round_trip_and_cli_predict(server_env, answering_model_dir, tmp_path, capsys):  # noqa: F811
    import mlflow.pyfunc

    from medloc_core import cli

    version = versions.log_and_register(
        answering_model_dir, g(50.0), eval_set_hash="hp", base_metrics=m(1.0), answer_style=ANSWER_STYLE
    )
    images = [random_image(100, 150, seed=1), random_image(300, 200, seed=2)]
    path = tmp_path / "a.png"
    images[0].save(path)
    df = pd.DataFrame(
        {
            "image": [encode_image(images[0]), encode_image(images[1])],
            "query": [QUERY, QUERY],
        }
    )
    model = mlflow.pyfunc.load_model(f"models:/{versions.MODEL_NAME}@{versions.CHALLENGER}")
    assert model.metadata.get_model_info().signature is not None
    out = model.predict(df, params={"max_new_tokens": 40})
    assert list(out.columns) == ["x1", "y1", "x2", "y2", "completion", "parsed"]
    assert out["parsed"].tolist() == [True, True]
    for img, (_, row) in zip(images, out.iterrows()):
        expected = Frame.for_qwen(img.width, img.height, 56 * 56, 112 * 112).to_original(ANSWER_BOX)
        assert [row.x1, row.y1, row.x2, row.y2] == pytest.approx(list(expected))

    # the folder inside the registered model is the Hugging Face model folder
    folder = versions.resolve_model_dir(f"models:/{versions.MODEL_NAME}/{version}", dst=tmp_path / "dl")
    assert (folder / "config.json").is_file()

    promote_if_better(version, client=server_env)
    saved = tmp_path / "drawn.png"
    code = cli.main(
        ["predict", "--model", "models:/medloc-grounder@champion", "--image", str(path), "--query", QUERY,
         "--max-new-tokens", "40", "--save-image", str(saved)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = Frame.for_qwen(150, 100, 56 * 56, 112 * 112).to_original(ANSWER_BOX)
    assert result["box"] == pytest.approx(list(expected))
    drawn = np.asarray(Image.open(saved).convert("RGB"))
    x = int(round((expected[0] + expected[2]) / 2))
    assert tuple(drawn[int(expected[1]), x]) == (255, 0, 0)  # top edge of the box, drawn in red


@pytest.mark.slow
def test_cli_predict_and_evaluate_with_local_folder(answering_model_dir, tmp_path, capsys):  # noqa: F811
    from medloc_core import cli

    df = prepared_frame(tmp_path)
    data = tmp_path / "prepared.parquet"
    df.to_parquet(data)
    out_json = tmp_path / "metrics.json"
    code = cli.main(
        ["evaluate", "--model", answering_model_dir, "--data", str(data), "--max-new-tokens", "40",
         "--n-boot", "50", "--json", str(out_json), "--output", str(tmp_path / "preds.csv")]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "synth_a" in printed and "66.67" in printed
    metrics = json.loads(out_json.read_text())
    assert metrics[M] == pytest.approx(200 / 3)
    assert len(pd.read_csv(tmp_path / "preds.csv")) == 3

    code = cli.main(
        ["predict", "--model", answering_model_dir, "--image", df["image_path"][0], "--query", QUERY,
         "--answer-style", ANSWER_STYLE, "--max-new-tokens", "40"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["box"] == pytest.approx([df["x1"][0], df["y1"][0], df["x2"][0], df["y2"][0]])


def test_predict_query_defaults_to_the_datasets_training_template() -> None:
    from medloc_core.cli.registry import resolve_query
    from medloc_core.data.templates import default_query

    assert resolve_query(None, "ham10000") == "Locate the skin lesion in this dermoscopy image."
    assert resolve_query(None, "tn3k") == default_query("tn3k", "") != resolve_query(None, "ham10000")
    assert resolve_query("Find the nodule.", "ham10000") == "Find the nodule."
    with pytest.raises(ValueError, match="--query is empty"):
        resolve_query("  ", "ham10000")


@pytest.mark.slow
def test_no_champion_is_a_one_line_message(server_env, answering_model_dir, tmp_path, capsys):  # noqa: F811
    from medloc_core import cli

    path = tmp_path / "a.png"
    random_image(100, 150, seed=1).save(path)
    argv = ["predict", "--model", "models:/medloc-grounder@champion", "--image", str(path), "--query", QUERY]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no champion yet" in err[0] and "@challenger" in err[0], err
    with pytest.raises(versions.NoModelAtAliasError, match="no champion yet"):
        versions.resolve_model_dir("models:/medloc-grounder@champion")

    # a registered but unpromoted version: still no champion, and @challenger is the way to use it
    versions.log_and_register(
        answering_model_dir, m(50.0), eval_set_hash="h", base_metrics=m(90.0), answer_style=ANSWER_STYLE
    )
    assert cli.main(argv) == 2
    assert "no champion yet" in capsys.readouterr().err
    argv[2] = "models:/medloc-grounder@challenger"
    assert cli.main([*argv, "--max-new-tokens", "40"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["box"] is not None


_RACER = """
import sys, time
from medloc_core.registry.promote import promote_if_better
start, version = float(sys.argv[1]), sys.argv[2]
time.sleep(max(0.0, start - time.time()))
print(promote_if_better(version).promote)
"""


@pytest.mark.slow
def test_two_promotions_at_once_always_leave_the_better_champion(server_env, tmp_path):
    """Two processes promote a worse and a better candidate at the same instant, 6 times over (both orders of
    start): the better one is always the champion afterwards."""
    import subprocess
    import sys
    import time

    client = server_env
    client.create_registered_model(versions.MODEL_NAME)

    def version(score: float) -> str:
        mv = client.create_model_version(versions.MODEL_NAME, source="s3://medloc-race/model", run_id=None)
        tags = {versions.TAG_EVAL_SET_HASH: "race", **versions.metrics_to_tags(g(score), include_ci=True)}
        tags.update(versions.metrics_to_tags(m(10.0), versions.BASE_PREFIX))
        for key, value in tags.items():
            client.set_model_version_tag(versions.MODEL_NAME, mv.version, key, value)
        return mv.version

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = tmp_path / "racer.py"
    script.write_text(_RACER)
    for round_ in range(6):
        old, worse, better = version(50.0), version(70.0), version(80.0 + round_)
        client.set_registered_model_alias(versions.MODEL_NAME, versions.CHAMPION, old)
        start = time.time() + 2.0
        order = (worse, better) if round_ % 2 == 0 else (better, worse)
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), str(start), v],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )
            for v in order
        ]
        outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert all(p.returncode == 0 for p in procs), outputs
        assert _aliases(client)["champion"] == int(better), (round_, order, outputs)


@pytest.mark.parametrize("case", ["missing", "not an image", "oversized"])
def test_predict_gives_one_line_errors_for_bad_image_files(case, tmp_path, capsys, monkeypatch):
    from medloc_core import cli
    from medloc_core.cli import registry as registry_cli

    image = tmp_path / "x.png"
    if case == "not an image":
        image.write_text("hello")
    elif case == "oversized":
        random_image(40, 50).save(image)
        monkeypatch.setattr(registry_cli, "MAX_IMAGE_PIXELS", 1000)
    code = cli.main(["predict", "--model", str(tmp_path / "no-model"), "--image", str(image), "--query", "q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    fragment = {
        "missing": "does not exist",
        "not an image": "not a readable image",
        "oversized": "over the limit",
    }
    assert err.startswith("medloc predict: ") and fragment[case] in err


def test_a_half_registered_version_never_survives_the_next_run(server_env):
    """Killed after creating a version but before its evaluation record: removed. Killed after the record but
    before the gate: finished as 'interrupted', never promoted. A version whose run is still live is left."""
    import mlflow

    client = server_env
    client.create_registered_model(versions.MODEL_NAME)
    experiment = mlflow.set_experiment("medloc-retire")
    runs = {}
    for name, status in (
        ("no-record", "KILLED"),
        ("no-gate", "KILLED"),
        ("live", None),
        ("done", "FINISHED"),
    ):
        run = client.create_run(experiment.experiment_id, run_name=name)
        if status:
            client.set_terminated(run.info.run_id, status)
        runs[name] = client.create_model_version(
            versions.MODEL_NAME, "s3://medloc/model", run.info.run_id
        ).version
    for name in ("no-gate", "done"):
        client.set_model_version_tag(versions.MODEL_NAME, runs[name], versions.TAG_EVAL_SET_HASH, "h")
    client.set_model_version_tag(versions.MODEL_NAME, runs["done"], versions.TAG_DECISION, "rejected")

    lines = versions.retire_incomplete_versions(client=client)
    assert len(lines) == 2, lines
    left = {v.version: v.tags for v in client.search_model_versions(f"name = '{versions.MODEL_NAME}'")}
    assert runs["no-record"] not in left and {runs["no-gate"], runs["live"], runs["done"]} <= set(left)
    assert left[runs["no-gate"]][versions.TAG_DECISION] == "interrupted"
    assert (
        versions.TAG_DECISION not in left[runs["live"]]
        and left[runs["done"]][versions.TAG_DECISION] == "rejected"
    )
    assert versions.retire_incomplete_versions(client=client) == []  # settled: nothing changes a second time
