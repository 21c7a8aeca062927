"""What MedLoc's ZenML stacks hold: component, secret and stack specifications for ``local``, ``local-s3``,
``k8s-gpu`` and ``kubeflow`` (values from the environment, ``MEDLOC_*`` and ``MLFLOW_TRACKING_*``); ``stacks.py`` registers them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Component names are prefixed so they never collide with a user's own components.
S3_SECRET = "medloc_s3_creds"
MLFLOW_SECRET = "medloc_mlflow_auth"
LOCAL_STACK = "local"
LOCAL_S3_STACK = "local-s3"
K8S_GPU_STACK = "k8s-gpu"
KUBEFLOW_STACK = "kubeflow"

#: Value of every key of a secret created by ``--placeholder-secrets``.
PLACEHOLDER = "CHANGE_ME"
#: Keys of the ZenML secrets the stacks reference.
SECRET_KEYS = {
    S3_SECRET: ("aws_access_key_id", "aws_secret_access_key"),
    MLFLOW_SECRET: ("username", "password"),
}


def component_types() -> Any:
    from zenml.enums import StackComponentType

    return StackComponentType


@dataclass(frozen=True)
class ComponentSpec:
    """One stack component: ZenML type value (e.g. ``"orchestrator"``), name, flavor and configuration."""

    type: str
    name: str
    flavor: str
    configuration: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StackSpec:
    """A stack and the components (and secrets) it needs, in registration order."""

    name: str
    components: Sequence[ComponentSpec]
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: Secrets referenced by the components whose values were not given; they must be created separately.
    missing_secrets: Sequence[str] = ()
    #: Custom flavors the components use, ``(component type, "module.Class")``, registered first.
    flavors: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class K8sGpuStackConfig:
    """Deployment values for the ``k8s-gpu`` stack (environment variable in brackets).

    Attributes:
        s3_path: artifact store root, ``s3://bucket/prefix`` [MEDLOC_S3_PATH].
        s3_endpoint_url: S3-compatible endpoint (MinIO, Ceph, moto); empty for AWS [MEDLOC_S3_ENDPOINT_URL].
        s3_region: region name [MEDLOC_S3_REGION].
        kubernetes_context: kubeconfig context of the cluster, used by the orchestrator and by kaniko
            (which drives ``kubectl`` from the client) [MEDLOC_K8S_CONTEXT].
        kubernetes_namespace: namespace for pipeline pods and kaniko builds [MEDLOC_K8S_NAMESPACE].
        registry_uri: container registry the step images are pushed to [MEDLOC_REGISTRY_URI].
        mlflow_tracking_uri: MLflow tracking server URL [MEDLOC_MLFLOW_TRACKING_URI].
        service_account: Kubernetes service account for orchestrator/step pods (``infra/k8s/20-rbac.yaml``)
            [MEDLOC_K8S_SERVICE_ACCOUNT].
        kubeflow_hostname: the Kubeflow Pipelines API of the ``kubeflow`` stack [MEDLOC_KUBEFLOW_HOSTNAME].
    """

    s3_path: str = "s3://medloc-artifacts/zenml"
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    kubernetes_context: str = "medloc-cluster"
    kubernetes_namespace: str = "medloc"
    registry_uri: str = "registry.example.com/medloc"
    mlflow_tracking_uri: str = "http://mlflow.medloc.svc.cluster.local:5000"
    service_account: str = "medloc-pipelines"
    kubeflow_hostname: str = "https://kubeflow.example.com/pipeline"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> K8sGpuStackConfig:
        """Read the values from ``MEDLOC_*`` environment variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        names = {
            "s3_path": "MEDLOC_S3_PATH",
            "s3_endpoint_url": "MEDLOC_S3_ENDPOINT_URL",
            "s3_region": "MEDLOC_S3_REGION",
            "kubernetes_context": "MEDLOC_K8S_CONTEXT",
            "kubernetes_namespace": "MEDLOC_K8S_NAMESPACE",
            "registry_uri": "MEDLOC_REGISTRY_URI",
            "mlflow_tracking_uri": "MEDLOC_MLFLOW_TRACKING_URI",
            "service_account": "MEDLOC_K8S_SERVICE_ACCOUNT",
            "kubeflow_hostname": "MEDLOC_KUBEFLOW_HOSTNAME",
        }
        return cls(**{attr: env[var] for attr, var in names.items() if env.get(var)})


_SECRET_ENV_KEYS = {
    S3_SECRET: {
        "aws_access_key_id": "MEDLOC_S3_ACCESS_KEY_ID",
        "aws_secret_access_key": "MEDLOC_S3_SECRET_ACCESS_KEY",
    },
    MLFLOW_SECRET: {"username": "MEDLOC_MLFLOW_USERNAME", "password": "MEDLOC_MLFLOW_PASSWORD"},
}
SECRET_ENV = {name: tuple(keys.values()) for name, keys in _SECRET_ENV_KEYS.items()}


def secret_values_from_env(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """ZenML secret values found in the environment, keyed by secret name.

    ``medloc_s3_creds`` needs ``MEDLOC_S3_ACCESS_KEY_ID`` and ``MEDLOC_S3_SECRET_ACCESS_KEY``;
    ``medloc_mlflow_auth`` needs ``MEDLOC_MLFLOW_USERNAME`` and ``MEDLOC_MLFLOW_PASSWORD``. A secret whose
    variables are not all set is left out (it is then expected to exist in the store already).
    """
    env = os.environ if environ is None else environ
    found: dict[str, dict[str, str]] = {}
    for secret, keys in _SECRET_ENV_KEYS.items():
        values = {key: env.get(var, "") for key, var in keys.items()}
        if all(values.values()):
            found[secret] = values
    return found


def _s3_store(name: str, path: str, endpoint_url: str, region: str) -> ComponentSpec:
    client_kwargs: dict[str, str] = {"region_name": region}
    if endpoint_url:
        client_kwargs["endpoint_url"] = endpoint_url
    return ComponentSpec(
        "artifact_store",
        name,
        "s3",
        {"path": path, "authentication_secret": S3_SECRET, "client_kwargs": client_kwargs},
    )


def _mlflow_server_tracker(name: str, tracking_uri: str) -> ComponentSpec:
    # ZenML refuses an http(s) tracking URI without credentials; they are resolved from the ZenML secret
    # at run time, inside the step pod.
    return ComponentSpec(
        "experiment_tracker",
        name,
        "mlflow",
        {
            "tracking_uri": tracking_uri,
            "tracking_username": "{{" + MLFLOW_SECRET + ".username}}",
            "tracking_password": "{{" + MLFLOW_SECRET + ".password}}",
        },
    )


#: The bearer token ZenML's tracker sends to a server that asks for none: ZenML requires exactly one
#: authentication method for an http(s) tracking URI, while a plain ``mlflow server`` on a private host ignores
#: the ``Authorization`` header. It is not a credential.
OPEN_SERVER_TOKEN = "medloc-open-server"
_MLFLOW_AUTH_ENV = (("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), SECRET_ENV[MLFLOW_SECRET])


def _server_auth(
    tracking_uri: str, environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Tracker settings and ZenML secrets for an MLflow server at ``tracking_uri``: the user's credentials
    when the environment has them (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, MedLoc's ``MEDLOC_MLFLOW_*``, or
    ``MLFLOW_TRACKING_TOKEN``), kept in the ZenML secret ``medloc_mlflow_auth``; else :data:`OPEN_SERVER_TOKEN`."""
    if not tracking_uri.startswith(("http://", "https://")):
        return {}, {}
    # Every key set, None where unused: ZenML merges an update into the stored settings and drops the Nones,
    # so switching from a token to a password (or back) leaves exactly one method.
    unset = dict.fromkeys(("tracking_username", "tracking_password", "tracking_token"))
    for user_var, password_var in _MLFLOW_AUTH_ENV:
        if environ.get(user_var) and environ.get(password_var):
            values = {"username": environ[user_var], "password": environ[password_var]}
            refs = {f"tracking_{key}": "{{" + MLFLOW_SECRET + "." + key + "}}" for key in values}
            return {**unset, **refs}, {MLFLOW_SECRET: values}
    if environ.get("MLFLOW_TRACKING_TOKEN"):
        token = {"tracking_token": "{{" + MLFLOW_SECRET + ".token}}"}
        return {**unset, **token}, {MLFLOW_SECRET: {"token": environ["MLFLOW_TRACKING_TOKEN"]}}
    return {**unset, "tracking_token": OPEN_SERVER_TOKEN}, {}


def local_stack_spec(mlflow_tracking_uri: str = "", environ: Mapping[str, str] | None = None) -> StackSpec:
    """The default single-machine stack: local orchestrator and artifact store, MLflow tracker + registry.

    With an empty ``mlflow_tracking_uri`` the tracker is ZenML's zero-config MLflow (SQLite DB and artifacts
    inside the local artifact store); otherwise it points at the given URI (``sqlite:///...`` or a server; a
    server's credentials come from the environment, and an open server needs none: :func:`_server_auth`).
    """
    tracker_config = {"tracking_uri": mlflow_tracking_uri} if mlflow_tracking_uri else {}
    auth, secrets = _server_auth(mlflow_tracking_uri, os.environ if environ is None else environ)
    return StackSpec(
        LOCAL_STACK,
        [
            ComponentSpec("orchestrator", "default", "local"),
            ComponentSpec("artifact_store", "default", "local"),
            ComponentSpec("experiment_tracker", "medloc_mlflow_local", "mlflow", {**tracker_config, **auth}),
            ComponentSpec("model_registry", "medloc_mlflow_registry", "mlflow"),
        ],
        secrets=secrets,
    )


def local_s3_stack_spec(
    s3_endpoint_url: str,
    bucket: str,
    mlflow_tracking_uri: str,
    *,
    prefix: str = "zenml",
    region: str = "us-east-1",
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> StackSpec:
    """Local orchestrator with an S3(-compatible) artifact store and an MLflow tracking server.

    This is the stack the loopback tests use (moto + ``mlflow server``) and a sensible one for a single GPU
    box that shares artifacts and the registry with a cluster.
    """
    secrets = dict(secrets or {})
    return StackSpec(
        LOCAL_S3_STACK,
        [
            ComponentSpec("orchestrator", "default", "local"),
            _s3_store("medloc_s3_loopback", f"s3://{bucket}/{prefix}", s3_endpoint_url, region),
            _mlflow_server_tracker("medloc_mlflow_loopback", mlflow_tracking_uri),
            ComponentSpec("model_registry", "medloc_mlflow_registry", "mlflow"),
        ],
        secrets=secrets,
        missing_secrets=[s for s in (S3_SECRET, MLFLOW_SECRET) if s not in secrets],
    )


def k8s_gpu_stack_spec(
    config: K8sGpuStackConfig, secrets: Mapping[str, Mapping[str, str]] | None = None
) -> StackSpec:
    """Kubernetes orchestrator, S3 artifact store, container registry, kaniko builder, MLflow server.

    GPUs are *not* configured here: they are requested per step through the orchestrator's pod settings in
    ``configs/medloc_training_k8s.yaml`` (ZenML 0.98 ignores ``ResourceSettings(gpu_count=...)`` on this
    orchestrator).
    """
    secrets = dict(secrets or {})
    orchestrator: dict[str, Any] = {
        "kubernetes_context": config.kubernetes_context,
        "kubernetes_namespace": config.kubernetes_namespace,
        "service_account_name": config.service_account,
    }
    kaniko: dict[str, Any] = {
        "kubernetes_context": config.kubernetes_context,
        "kubernetes_namespace": config.kubernetes_namespace,
        # The build context goes through the S3 artifact store, so no local docker daemon is needed.
        "store_context_in_artifact_store": True,
        "service_account_name": config.service_account,
    }
    return StackSpec(
        K8S_GPU_STACK,
        [
            ComponentSpec("orchestrator", "medloc_k8s", "kubernetes", orchestrator),
            _s3_store("medloc_s3", config.s3_path, config.s3_endpoint_url, config.s3_region),
            ComponentSpec("container_registry", "medloc_registry", "default", {"uri": config.registry_uri}),
            ComponentSpec("image_builder", "medloc_kaniko", "kaniko", kaniko),
            _mlflow_server_tracker("medloc_mlflow_server", config.mlflow_tracking_uri),
            ComponentSpec("model_registry", "medloc_mlflow_registry", "mlflow"),
        ],
        secrets=secrets,
        missing_secrets=[s for s in (S3_SECRET, MLFLOW_SECRET) if s not in secrets],
    )


def kubeflow_stack_spec(
    config: K8sGpuStackConfig, secrets: Mapping[str, Mapping[str, str]] | None = None
) -> StackSpec:
    """ZenML's Kubeflow Pipelines orchestrator (flavor ``medloc_kubeflow``: ZenML's, with the fixes of
    ``infra/kubeflow_flavor.py``) with the ``k8s-gpu`` stack's S3 artifact store, registry, kaniko builder and
    MLflow server (the same components, registered once). GPUs: ``ResourceSettings`` of ``train_model`` plus
    its accelerator node selector (``configs/medloc_training_kubeflow.yaml``)."""
    shared = [c for c in k8s_gpu_stack_spec(config, secrets).components if c.type != "orchestrator"]
    orchestrator = ComponentSpec(
        "orchestrator",
        "medloc_kubeflow",
        "medloc_kubeflow",  # ZenML's kubeflow flavor with MedLoc's fixes (infra/kubeflow_flavor.py)
        {"kubeflow_hostname": config.kubeflow_hostname, "kubeflow_namespace": config.kubernetes_namespace},
    )
    secrets = dict(secrets or {})
    return StackSpec(
        KUBEFLOW_STACK,
        [orchestrator, *shared],
        secrets=secrets,
        missing_secrets=[s for s in (S3_SECRET, MLFLOW_SECRET) if s not in secrets],
        flavors=[("orchestrator", "infra.kubeflow_flavor.MedlocKubeflowOrchestratorFlavor")],
    )
