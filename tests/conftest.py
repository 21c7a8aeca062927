"""Fixtures shared by several test modules: real servers on loopback and the small models the tests load.

Helpers (``make_prepared``, ``random_image``, ``env_for``, ...) stay in the modules that define them; the
fixtures below are found by pytest without imports.
"""

from __future__ import annotations

import pytest
from mlflow_server import mlflow_server, mlflow_server_uri  # noqa: F401  (session fixtures: one MLflow server)
from s3_server import mlflow_s3, s3  # noqa: F401  (module fixtures: loopback S3 and an MLflow server on it)


@pytest.fixture()
def server_env(mlflow_server_uri, tmp_path, monkeypatch):  # noqa: F811
    """Point MLflow (env and client) at the session's server and start from an empty registry."""
    import mlflow
    from mlflow import MlflowClient

    from medloc_core.registry.versions import MODEL_NAME

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_uri)
    monkeypatch.setenv("MEDLOC_HOME", str(tmp_path / "medloc_home"))
    mlflow.set_tracking_uri(mlflow_server_uri)
    client = MlflowClient(tracking_uri=mlflow_server_uri, registry_uri=mlflow_server_uri)
    try:
        client.delete_registered_model(MODEL_NAME)
    except mlflow.exceptions.MlflowException:
        pass
    yield client
    if mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="session")
def answering_model_dir(tmp_path_factory) -> str:
    """A stand-in trained (in code) to always answer ``ANSWER_BOX``: inference, registry and SFT tests."""
    from helpers import build_answering_model

    return build_answering_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The random tiny stand-in (its answers never parse)."""
    from medloc_core.model.standin import ensure_tiny_model

    return str(ensure_tiny_model(tmp_path_factory.getbasetemp() / "tiny"))


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """18 prepared rows of the synthetic set (the training tests' data)."""
    from helpers import make_prepared

    return make_prepared(tmp_path_factory.mktemp("data"), n=18)


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, data):
    """SFT warm-up on the tiny model, then 3 GRPO steps with the MedLoc curriculum."""
    from helpers import Hooks, cpu_training_config

    from medloc_core.training.session import train

    root = tmp_path_factory.mktemp("sft_run")
    sink: list[tuple[int, dict]] = []
    hooks = Hooks()
    cfg = cpu_training_config(
        model_name_or_path="tiny",
        tiny_model_dir=str(root / "models"),
        sft_warmup_steps=80,
        max_steps=3,
        format_partial_credit=True,
    )
    result = train(
        data,
        cfg,
        root / "out",
        metrics_sink=lambda m, s: sink.append((s, dict(m))),
        callbacks=[hooks.callback],
    )
    return {"result": result, "sink": sink, "hooks": hooks, "out": root / "out", "sft": root / "out" / "sft"}


#: Modules whose tests run ZenML from the repository root (elsewhere: tests marked ``zenml_repository``). They
#: share its `.zen` (the repository's active stack), so under `pytest -n 2 --dist loadgroup` they all run on one
#: worker, one after another.
ZENML_REPOSITORY_MODULES = ("test_pipeline_", "test_infra_")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.module.__name__.startswith(ZENML_REPOSITORY_MODULES) or item.get_closest_marker(
            "zenml_repository"
        ):
            item.add_marker(pytest.mark.xdist_group("zenml_repository"))
