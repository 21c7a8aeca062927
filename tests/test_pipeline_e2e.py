"""End to end: `zenml pipeline run medloc_training` as a user runs it, in a temp ZenML/MLflow home.

Runs the literal CLI command in a subprocess on a shrunken copy of the local CPU config, then reads the MLflow
run it made: the curriculum trace has one point per GRPO step, the model is registered with an alias, and the
artifacts (plots, quarantine report, manifest) are there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import MAX_STEPS, env_for, shrunken_config, zenml_query

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_zenml_pipeline_run_medloc_training_end_to_end(tmp_path: Path) -> None:
    config = shrunken_config(tmp_path)
    # A secret substituted into the config (here into the data root): used, but recorded nowhere.
    secret = "tok-" + os.urandom(8).hex()
    text = config.read_text().replace("synth-ham10000", "synth-${MEDLOC_DATA_TOKEN}")
    config.write_text(text)
    env = {**env_for(tmp_path), "MEDLOC_DATA_TOKEN": secret}
    zenml = Path(sys.executable).with_name("zenml")
    result = subprocess.run(
        [str(zenml), "pipeline", "run", "medloc_training", "-c", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    log = result.stdout + result.stderr
    # A log a person reads: progress lines instead of TRL's per-step dicts and the libraries' progress bars,
    # no harmless warnings, and the closing summary with where to look.
    assert len(log.splitlines()) < 150 and "\r" not in log, log[-4000:]
    for line in (
        "SFT warm-up step",
        "GRPO step",
        "Summary of this run",
        "GRPO: ",
        "MLflow run ",
        "ZenML run: ",
    ):
        assert line in log, (line, log[-4000:])
    for noise in ("{'loss'", "FutureWarning", "fastai", "it/s]", "img/s]", "Loading weights"):
        assert noise not in log, (noise, log[-4000:])
    assert (tmp_path / "data" / f"synth-{secret}").is_dir()  # the value was used where the data lives
    leaks = [
        str(path)
        for path in [
            tmp_path / "mlflow.db",
            *(tmp_path / "zenml").rglob("*"),
            *(tmp_path / "home").rglob("*"),
        ]
        if path.is_file() and secret.encode() in path.read_bytes()
    ]
    assert not leaks and secret not in result.stdout + result.stderr, (
        leaks
    )  # params, manifest, artifacts, logs

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("medloc")
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's classic ML view
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "one MLflow run per pipeline run"
    run = runs[0]
    # ZenML's MLflow experiment tracker ran it: the embedded stack carries the tracker, the run is ZenML's, and
    # the experiment's artifacts stay under MEDLOC_HOME (not ./mlruns of the working directory)
    assert run.data.tags.get("zenml"), run.data.tags  # the tracker tags its runs with the ZenML version
    assert experiment.artifact_location.startswith((tmp_path / "home").as_uri()), experiment.artifact_location
    stack = zenml_query(
        env,
        # the stack the run ran on (the repository's active stack is shared by every test that runs ZenML)
        "from zenml.enums import StackComponentType as T\n"
        "s = Client().get_pipeline('medloc_training').last_run.stack; t = s.components[T.EXPERIMENT_TRACKER][0]; "
        "out = {'stack': s.name, 'tracker': t.flavor_name, 'uri': t.configuration.get('tracking_uri')}",
    )
    assert stack == {"stack": "local", "tracker": "mlflow", "uri": env["MLFLOW_TRACKING_URI"]}, stack
    step_uri = zenml_query(
        env,
        "r = Client().get_pipeline('medloc_training').last_run; "
        "out = [str(r.steps[s].run_metadata['mlflow_run_id']) for s in ('ingest_data', 'register_model')]",
    )
    assert step_uri == [run.info.run_id] * 2
    # what ZenML's own dashboard shows: metrics on the steps, the run report (summary, card, plots) as HTML
    on_steps = zenml_query(
        env,
        "r = Client().get_pipeline('medloc_training').last_run; s = r.steps; "
        "report = s['register_model'].outputs['run_report'][0]; "
        "out = [sorted(s['evaluate_model'].run_metadata['evaluation']), sorted(s['train_model'].run_metadata['training']), "
        "str(report.visualizations[0].type), open(report.visualizations[0].uri).read()[:200]]",
    )
    assert "eval/A@0.5" in on_steps[0] and "tau_raises" in on_steps[1], on_steps
    assert "html" in str(on_steps[2]).lower() and "MedLoc run" in on_steps[3], on_steps

    history = client.get_metric_history(run.info.run_id, "curriculum/threshold")
    assert sorted(m.step for m in history) == list(range(1, MAX_STEPS + 1))
    training = yaml.safe_load(config.read_text())["parameters"]["training"]
    schedule = training["schedule"]
    block = training["spread" if schedule == "medloc_spread" else "curriculum"]
    assert all(block["tau0"] <= m.value <= block.get("tau_target", 0.8) for m in history)
    # the schedule's window statistics: MedLoc-R1's readiness bars, or where medloc_spread's τ is heading
    own = ("curriculum/iou_quantile",) if schedule == "medloc_spread" else ("curriculum/required_hit_rate",)
    for key in (
        "train/frac_reward_zero_std",
        "train/dead_all_hit",
        "train/dead_all_miss",
        "curriculum/hit_rate",
        "curriculum/raised",
        *own,
    ):
        assert len(client.get_metric_history(run.info.run_id, key)) == MAX_STEPS, key
    assert len(client.get_metric_history(run.info.run_id, "sft/loss")) == 120
    for key in (
        "eval/A_at_0.5",
        "eval/A_at_0.8",
        "eval/pseudo_mAP",
        "eval/mIoU",
        "eval_base/A_at_0.5",
        "eval/gain/A_at_0.5",
        "eval/gain/A_at_0.5_ci_low",
    ):
        assert key in run.data.metrics, key
    assert run.data.params["training.schedule"] == schedule
    assert run.data.params["data.manifest_hash"]
    # the resolved config: defaults that the YAML never states are logged too
    params = run.data.params
    assert params["training.reward_parser"] == "vlmr1" and params["training.top_k"] == "0"
    assert (
        params["training.curriculum.refresh_fraction"] == "0.5"
    )  # the paper's rule's defaults, always logged
    assert params["training.spread.max_raise"] == "0.05"
    assert params["evaluation.batch_size"] == "8" and params["registration.require_beats_base"] == "True"
    assert "preprocessing.split_fractions" in params and "data.max_quarantine_fraction" in params
    # the datasets, one input per split
    full = client.get_run(run.info.run_id)
    contexts = {
        tag.value for d in full.inputs.dataset_inputs for tag in d.tags if tag.key == "mlflow.data.context"
    }
    assert {"train", "val", "test"} <= contexts
    # TRL's own MLflow reporting (all its metrics) and the completions table every 2 steps
    for key in ("loss", "reward", "completions/mean_length", "rewards/format_reward/mean"):
        assert len(client.get_metric_history(run.info.run_id, key)) == MAX_STEPS, key
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "completions")}
    assert "completions/step_00002.json" in tables, tables

    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {
        "plots/curriculum.png",
        "plots/rewards.png",
        "plots/dead_groups.png",
        "plots/test_predictions.png",
    } <= plots
    data = {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert {"data/quarantine.csv", "data/manifest.json"} <= data

    version = client.get_model_version_by_alias("medloc-grounder", "challenger")
    assert int(version.version) == 1
    assert version.tags["medloc.run_id"] == run.info.run_id
    assert version.tags["medloc.promotion.decision"] in {"promoted", "rejected"}
    assert version.description.startswith("Promotion gate: ")
    # the model card follows the gate's decision: recipe, data, curriculum trace, metrics with intervals, limits
    card = version.description.partition("## Model card")[2]
    for part in (
        "Intended use and limits",
        "not a medical device",
        "schedule: medloc",
        "Curriculum trace",
        "GRPO: ",
        "A@0.5 ",
        " vs ",
        "records (",
    ):
        assert part.lower() in card.lower(), (part, card)
    assert "not a medical device" in client.get_registered_model("medloc-grounder").description
    # the evaluation metrics are metrics of the MLflow 3 logged model, not string tags on the version
    from medloc_core.registry.versions import logged_model_id

    assert not any(key.startswith(("eval/", "base/")) for key in version.tags), version.tags
    logged = {m.key for m in client.get_logged_model(logged_model_id(version)).metrics}
    assert {"eval/A_at_0.5", "eval/mIoU", "eval_base/A_at_0.5"} <= logged, logged
    # the served model prompts as the run trained and evaluated: the preprocessing's answer style (`answer`)
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    served = mlflow.pyfunc.load_model(f"models:/medloc-grounder/{version.version}")
    assert served.model_config["answer_style"] == "answer", served.model_config
    assert served.model_config["max_new_tokens"] == 32  # the evaluation's setting, not a second default

    # ZenML's Model Control Plane lists the run's model version, linked to the MLflow version
    listed = subprocess.run(
        [str(zenml), "model", "version", "list", "--model", "medloc-grounder"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0 and "medloc-grounder" in listed.stdout, listed.stdout + listed.stderr
    model_version = zenml_query(
        env,
        "v = Client().get_model_version('medloc-grounder'); "
        "out = {'mlflow_version': v.run_metadata['mlflow_version'], 'stage': str(v.stage), "
        "'artifacts': len(v.data_artifact_ids)}",
    )
    assert int(model_version["mlflow_version"]) == 1
    promoted = version.tags["medloc.promotion.decision"] == "promoted"
    assert ("production" if promoted else "staging") in model_version["stage"].lower()
    assert model_version["artifacts"] > 0  # the run's artifacts are linked to it

    # The ZenML dashboard works locally: `zenml login --local` serves this store on loopback and lists the run
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server_env = {**env, "ZENML_AUTO_OPEN_DASHBOARD": "false"}
    login = subprocess.run(
        [str(zenml), "login", "--local", "--port", str(port), "--ip-address", "127.0.0.1"],
        cwd=REPO, env=server_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    try:
        assert login.returncode == 0, login.stdout[-2000:] + login.stderr[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
            assert response.status == 200
        runs = subprocess.run(
            [str(zenml), "pipeline", "runs", "list"], cwd=REPO, env=server_env, capture_output=True, text=True, timeout=120
        )  # fmt: skip
        assert runs.returncode == 0 and "medloc_training" in runs.stdout, (
            runs.stdout[-2000:] + runs.stderr[-2000:]
        )
    finally:
        subprocess.run(
            [str(zenml), "logout", "--local"], cwd=REPO, env=server_env, capture_output=True, timeout=120
        )


def _set(path: str, value: object):
    """An edit of the local config: set ``parameters.<path>`` (dots; ``sources.0`` indexes a list)."""

    def edit(config: dict) -> dict:
        node = config["parameters"]
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if value is None:
            node.pop(last)
        else:
            node[last] = {**node.get(last, {}), **value} if isinstance(value, dict) else value
        return config

    return edit


CONFIG_ERRORS = {
    "unknown curriculum key": (_set("training.curriculum", {"tau_0": 0.3}), "training.curriculum.tau_0"),
    "unknown evaluation key": (_set("evaluation.batchsize", 4), "evaluation.batchsize"),
    "mistyped margin": (_set("registration.margin", "a lot"), "registration.margin"),
    "unknown preprocessing key": (_set("preprocessing.answer_stile", "answer"), "preprocessing.answer_stile"),
    # answer style comes from the preprocessing (answer); a training block saying otherwise is refused
    "training restates the answer style": (_set("training.answer_style", "think"), "training.answer_style"),
    "split fractions over 1": (_set("preprocessing.split_fractions", [0.6, 0.3, 0.3]), "split_fractions"),
    "unknown answer style": (_set("preprocessing.answer_style", "json"), "preprocessing.answer_style"),
    "max_pixels below min_pixels": (_set("preprocessing.max_pixels", 1000), "preprocessing.max_pixels"),
    "a gate metric evaluation never writes": (
        _set("registration.metric", "eval/A@0.65"),
        "registration.metric",
    ),
    "a data root that does not exist": (
        lambda c: _set("data.sources.0.synth", None)(_set("data.sources.0.root", "/no/such/dataset")(c)),
        "data.sources[0].root",
    ),
    "a top level that is a list": (lambda c: [c], "the top level must be a mapping"),
    "no data sources": (_set("data.sources", []), "data.sources"),
    "an unset variable": (
        _set("data.sources.0.root", "${MEDLOC_NOT_SET_ANYWHERE}/x"),
        "MEDLOC_NOT_SET_ANYWHERE",
    ),
}


@pytest.mark.parametrize("case", sorted(set(CONFIG_ERRORS) - {"a data root that does not exist"}))
def test_a_config_file_is_checked_whole_before_zenml_reads_it(tmp_path: Path, case: str) -> None:
    """What ``-c FILE`` passes through first (``config.load_run_config``): one line naming the file and key.
    (The data root needs the active stack, so only the CLI test below covers it.)"""
    from medloc_core.run_config import ConfigError, load_run_config

    edit, named = CONFIG_ERRORS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(edit(yaml.safe_load((REPO / "configs" / "medloc_training_local.yaml").read_text())))
    )
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert named in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["unknown curriculum key", "a gate metric evaluation never writes", "a data root that does not exist",
     "a top level that is a list"],
)  # fmt: skip
def test_a_config_error_fails_before_any_step_runs_in_one_line(tmp_path: Path, case: str) -> None:
    """`zenml pipeline run medloc_training -c <bad config>` fails in seconds, before any step, with one short
    message naming the key (and the file) and no traceback; ``MEDLOC_DEBUG=1`` shows the traceback."""
    import time

    edit, named = CONFIG_ERRORS[case]
    config = edit(yaml.safe_load((REPO / "configs" / "medloc_training_local.yaml").read_text()))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    zenml = Path(sys.executable).with_name("zenml")
    start = time.monotonic()
    result = subprocess.run(
        [str(zenml), "pipeline", "run", "medloc_training", "-c", str(path)],
        cwd=REPO, env=env_for(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert named in output, output[-3000:]
    assert "has started" not in output and "ingest_data" not in output, output[-3000:]  # no step ran
    message = [line for line in output.splitlines() if line.startswith("medloc_training: ")]
    assert len(message) == 1 and named in message[0], output[-3000:]
    lines = output.splitlines()
    tail = lines[lines.index(message[0]) :]  # before it, only ZenML's first-use chatter on a fresh store
    assert "Traceback" not in output and "│" not in output and len(tail) <= 2, output[-3000:]
    assert seconds < 120, seconds
    if case == "a top level that is a list":
        assert str(path) in message[0]
        debug = subprocess.run(
            [str(zenml), "pipeline", "run", "medloc_training", "-c", str(path)],
            cwd=REPO, env={**env_for(tmp_path), "MEDLOC_DEBUG": "1"}, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert debug.returncode != 0 and "Traceback" in debug.stdout + debug.stderr


@pytest.mark.slow
def test_a_failed_pipeline_leaves_its_mlflow_run_failed(tmp_path: Path) -> None:
    """Ingest and preprocess log into the run (FINISHED after each step); training then fails: the run ends
    FAILED, tagged with the step and the error; the ZenML steps carry the MLflow run id as metadata."""
    config = yaml.safe_load(shrunken_config(tmp_path).read_text())
    config["parameters"]["training"]["model_name_or_path"] = str(tmp_path / "no-such-model")
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(config))
    env = env_for(tmp_path)
    zenml = Path(sys.executable).with_name("zenml")
    result = subprocess.run(
        [str(zenml), "pipeline", "run", "medloc_training", "-c", str(path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode != 0
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("medloc").experiment_id])
    assert run.info.status == "FAILED", run.info.status
    assert (
        run.data.tags["medloc.failed_step"] == "train_model"
        and "no-such-model" in run.data.tags["medloc.error"]
    )
    assert "data/records" in run.data.metrics  # the steps before the failure logged into the same run

    linked = zenml_query(
        env,
        "r = Client().get_pipeline('medloc_training').last_run; "
        "out = str(r.steps['ingest_data'].run_metadata['mlflow_run_id'])",
    )
    assert linked == run.info.run_id
