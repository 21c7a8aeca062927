"""infra/k8s manifests: parse, validate against the Kubernetes models and JSON schemas, and say what they should."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infra.validate_manifests import (  # noqa: E402
    ManifestError,
    load_manifests,
    main,
    schema_validator_available,
    validate_file,
    validate_model,
    validate_schema,
)

MANIFESTS = sorted((REPO / "infra" / "k8s").glob("*.yaml"))
needs_schemas = pytest.mark.skipif(
    not schema_validator_available(), reason="kubernetes-validate not installed"
)


def _docs() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in MANIFESTS for d in load_manifests(p)}


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_expected_objects_exist():
    assert set(_docs()) >= {
        ("Namespace", "medloc"),
        ("ServiceAccount", "medloc-pipelines"),
        ("Role", "medloc-pipelines"),
        ("RoleBinding", "medloc-pipelines"),
        ("Secret", "mlflow-postgres"),
        ("Secret", "mlflow-s3"),
        ("Secret", "mlflow-auth"),
        ("StatefulSet", "mlflow-postgres"),
        ("Service", "mlflow-postgres"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("StatefulSet", "zenml-mysql"),
        ("Secret", "medloc-mlflow-client"),
        ("PersistentVolumeClaim", "medloc-datasets"),
        ("PersistentVolumeClaim", "medloc-models"),
        ("Job", "medloc-fill-volumes"),
    }


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_client_models(path: Path):
    objects = validate_file(path, schema=False)
    assert objects and all(o.metadata.name for o in objects)


@needs_schemas
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_json_schema(path: Path):
    for index, doc in enumerate(load_manifests(path)):
        validate_schema(doc, f"{path.name}#{index}")


def test_mlflow_server_uses_postgres_s3_and_auth():
    docs = _docs()
    deployment = docs[("Deployment", "mlflow")]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = _env(container)
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        "postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@mlflow-postgres:5432/$(POSTGRES_DB)"
    )
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert {ref["secretRef"]["name"] for ref in container["envFrom"]} == {
        "mlflow-postgres",
        "mlflow-s3",
        "mlflow-auth",
    }
    script = container["args"][0]
    assert "--serve-artifacts" in script and "--app-name basic-auth" in script and "--host 0.0.0.0" in script
    assert "mlflow.medloc.svc.cluster.local:*" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    # The services route to the pods they are meant for.
    service = docs[("Service", "mlflow")]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 5000
    postgres = docs[("StatefulSet", "mlflow-postgres")]
    assert docs[("Service", "mlflow-postgres")]["spec"]["selector"].items() <= (
        postgres["spec"]["template"]["metadata"]["labels"].items()
    )
    assert postgres["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"secretRef": {"name": "mlflow-postgres"}}
    ]
    # Every object lives in the medloc namespace (the Namespace itself excepted).
    assert {d["metadata"].get("namespace") for k, d in docs.items() if k[0] != "Namespace"} == {"medloc"}


def test_secret_templates_hold_no_real_values():
    secrets = [d for (kind, _), d in _docs().items() if kind == "Secret"]
    sensitive = [
        (s["metadata"]["name"], key, value)
        for s in secrets
        for key, value in s["stringData"].items()
        if any(word in key for word in ("PASSWORD", "SECRET", "KEY"))
    ]
    assert len(sensitive) >= 6
    assert all(value == "CHANGE_ME" for _, _, value in sensitive), sensitive
    assert all("data" not in s for s in secrets)


def _deployment() -> dict:
    return copy.deepcopy(_docs()[("Deployment", "mlflow")])


def test_typo_in_field_is_rejected():
    doc = _deployment()
    doc["spec"]["template"]["spec"]["contianers"] = doc["spec"]["template"]["spec"].pop("containers")
    with pytest.raises(
        ManifestError, match=r"Deployment/mlflow.*spec\.template\.spec.*unknown field 'contianers'"
    ):
        validate_model(doc, "broken.yaml")


def test_missing_required_field_is_rejected():
    doc = _deployment()
    del doc["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ManifestError, match=r"containers\[0\].*`name`"):
        validate_model(doc)


def test_wrong_type_is_rejected():
    doc = _deployment()
    doc["spec"]["replicas"] = "one"
    with pytest.raises(ManifestError, match=r"spec\.replicas: expected int"):
        validate_model(doc)


def test_unknown_kind_is_rejected():
    with pytest.raises(ManifestError, match="no Kubernetes model"):
        validate_model({"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}})


@needs_schemas
def test_schema_rejects_bad_value():
    doc = _deployment()
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "5000"
    with pytest.raises(ManifestError, match="containerPort"):
        validate_schema(doc, "broken.yaml")


def test_cli_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n")
    assert main([str(MANIFESTS[0])]) == 0
    assert main([str(broken)]) == 1
    assert "unknown field 'portz'" in capsys.readouterr().err
    with pytest.raises(
        SystemExit
    ) as done:  # --help prints the usage and exits 0 (it was read as a file name)
        main(["--help"])
    assert done.value.code == 0 and "MANIFEST.yaml" in capsys.readouterr().out
