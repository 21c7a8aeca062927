"""Register MedLoc's ZenML stacks idempotently: ``local``, ``local-s3`` and ``k8s-gpu``.

Run from the repository root against whatever ZenML store is active (the embedded SQLite store, or a ZenML
server after ``zenml login``)::

    python infra/stacks.py local   [--set]      # default orchestrator + local artifact store + MLflow
    python infra/stacks.py local-s3 --s3-endpoint http://127.0.0.1:9000 --bucket medloc-artifacts \
        --mlflow-uri http://127.0.0.1:5000 [--set]   # local orchestrator, S3 artifacts, MLflow server
    python infra/stacks.py k8s-gpu [--set]      # Kubernetes orchestrator, S3, registry, kaniko, MLflow server

Every component, secret and stack is created when missing, updated when its configuration differs, and left
alone when it already matches, so running the script twice changes nothing the second time. Secret *values*
are read from the environment only (never from files in the repository); see ``infra/README.md``.

Values for ``k8s-gpu`` come from the environment (``MEDLOC_*`` variables, listed in ``K8sGpuStackConfig``);
unset values fall back to placeholders so that the stack can be registered offline and fixed later with
``zenml <component> update``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("medloc.infra.stacks")

# Component names are prefixed so they never collide with a user's own components.
S3_SECRET = "medloc_s3_creds"
MLFLOW_SECRET = "medloc_mlflow_auth"
LOCAL_STACK = "local"
LOCAL_S3_STACK = "local-s3"
K8S_GPU_STACK = "k8s-gpu"

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
#: Value of every key of a secret created by ``--placeholder-secrets``.
PLACEHOLDER = "CHANGE_ME"
#: Keys of the ZenML secrets the stacks reference.
SECRET_KEYS = {
    S3_SECRET: ("aws_access_key_id", "aws_secret_access_key"),
    MLFLOW_SECRET: ("username", "password"),
}


def _component_types() -> Any:
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
    """

    s3_path: str = "s3://medloc-artifacts/zenml"
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    kubernetes_context: str = "medloc-cluster"
    kubernetes_namespace: str = "medloc"
    registry_uri: str = "registry.example.com/medloc"
    mlflow_tracking_uri: str = "http://mlflow.medloc.svc.cluster.local:5000"
    service_account: str = "medloc-pipelines"

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
        }
        return cls(**{attr: env[var] for attr, var in names.items() if env.get(var)})


_SECRET_ENV_KEYS = {
    S3_SECRET: {
        "aws_access_key_id": "MEDLOC_S3_ACCESS_KEY_ID",
        "aws_secret_access_key": "MEDLOC_S3_SECRET_ACCESS_KEY",
    },
    MLFLOW_SECRET: {"username": "MEDLOC_MLFLOW_USERNAME", "password": "MEDLOC_MLFLOW_PASSWORD"},
}
_SECRET_ENV = {name: tuple(keys.values()) for name, keys in _SECRET_ENV_KEYS.items()}


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
_MLFLOW_AUTH_ENV = (("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), _SECRET_ENV[MLFLOW_SECRET])


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


def _differs(stored: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return any(stored.get(key) != value for key, value in desired.items())


def ensure_secret(client: Any, name: str, values: Mapping[str, str]) -> str:
    """Create the ZenML secret ``name`` or update the keys whose values differ; returns what happened."""
    try:
        secret = client.get_secret(name, allow_partial_name_match=False, allow_partial_id_match=False)
    except KeyError:
        client.create_secret(name=name, values=dict(values))
        return CREATED
    stored = {key: value.get_secret_value() for key, value in secret.values.items() if value is not None}
    if not _differs(stored, values):
        return UNCHANGED
    client.update_secret(name, add_or_update_values=dict(values))
    return UPDATED


def ensure_component(client: Any, spec: ComponentSpec) -> str:
    """Create the component, or update its configuration when it differs; returns what happened.

    Raises:
        ValueError: a component of that type and name exists with another flavor (the script never
            deletes anything; rename or remove it by hand).
    """
    component_type = _component_types()(spec.type)
    try:
        existing = client.get_stack_component(component_type, spec.name, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack_component(
            name=spec.name,
            flavor=spec.flavor,
            component_type=component_type,
            configuration=dict(spec.configuration),
        )
        return CREATED
    if existing.flavor_name != spec.flavor:
        raise ValueError(
            f"{spec.type} '{spec.name}' exists with flavor '{existing.flavor_name}', expected "
            f"'{spec.flavor}'; delete or rename it (`zenml {spec.type.replace('_', '-')} delete {spec.name}`)"
        )
    if not _differs(existing.configuration, spec.configuration):
        return UNCHANGED
    client.update_stack_component(spec.name, component_type, configuration=dict(spec.configuration))
    return UPDATED


def _secret_exists(client: Any, name: str) -> bool:
    try:
        client.get_secret(name, allow_partial_name_match=False, allow_partial_id_match=False)
    except KeyError:
        return False
    return True


def ensure_stack(
    client: Any, spec: StackSpec, *, activate: bool = False, placeholder_secrets: bool = False
) -> dict[str, str]:
    """Register ``spec`` (secrets, components, stack) idempotently.

    ZenML resolves ``{{secret.key}}`` references when a component is registered, so every secret in
    ``spec.missing_secrets`` must already exist. With ``placeholder_secrets=True`` a missing one is created
    with the value ``CHANGE_ME`` for each key (offline registration); an existing secret is never overwritten
    by placeholders.

    Returns:
        What happened to each object, e.g. ``{"secret:medloc_s3_creds": "created",
        "orchestrator:medloc_k8s": "unchanged", "stack:k8s-gpu": "updated"}``.

    Raises:
        RuntimeError: a referenced secret is missing and ``placeholder_secrets`` is False.
    """
    report: dict[str, str] = {}
    for name, values in spec.secrets.items():
        report[f"secret:{name}"] = ensure_secret(client, name, values)
    for name in spec.missing_secrets:
        if _secret_exists(client, name):
            report[f"secret:{name}"] = UNCHANGED
        elif placeholder_secrets:
            client.create_secret(name=name, values=dict.fromkeys(SECRET_KEYS[name], PLACEHOLDER))
            report[f"secret:{name}"] = CREATED
            logger.warning(
                "created ZenML secret '%s' with placeholder values; set the real ones with "
                "`zenml secret update %s --%s=...` before running",
                name,
                name,
                SECRET_KEYS[name][0],
            )
        else:
            raise RuntimeError(
                f"stack '{spec.name}' references the ZenML secret '{name}' which does not exist and no "
                f"values were given; export {' and '.join(_SECRET_ENV[name])}, or create it with "
                f"`zenml secret create {name} "
                + " ".join(f"--{key}=..." for key in SECRET_KEYS[name])
                + "`, or pass --placeholder-secrets"
            )
    for component in spec.components:
        report[f"{component.type}:{component.name}"] = ensure_component(client, component)

    component_types = _component_types()
    wanted = {component_types(c.type): c.name for c in spec.components}
    try:
        stack = client.get_stack(spec.name, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(name=spec.name, components=wanted)
        report[f"stack:{spec.name}"] = CREATED
    else:
        current = {ctype: comps[0].name for ctype, comps in stack.components.items() if comps}
        if current != wanted:
            removed = {ctype: [] for ctype in current if ctype not in wanted}
            client.update_stack(spec.name, component_updates={**removed, **wanted})
            report[f"stack:{spec.name}"] = UPDATED
        else:
            report[f"stack:{spec.name}"] = UNCHANGED
    if activate:
        client.activate_stack(spec.name)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stack", choices=[LOCAL_STACK, LOCAL_S3_STACK, K8S_GPU_STACK])
    parser.add_argument("--set", action="store_true", help="activate the stack afterwards")
    parser.add_argument(
        "--mlflow-uri",
        default=os.environ.get("MEDLOC_MLFLOW_TRACKING_URI", ""),
        help="MLflow tracking URI (local: optional, default the project's store, $MLFLOW_TRACKING_URI or "
        "$MEDLOC_HOME/mlflow/mlflow.db; local-s3: the server URL)",
    )
    parser.add_argument("--s3-endpoint", default=os.environ.get("MEDLOC_S3_ENDPOINT_URL", ""))
    parser.add_argument("--bucket", default=os.environ.get("MEDLOC_S3_BUCKET", "medloc-artifacts"))
    parser.add_argument("--prefix", default="zenml", help="key prefix inside the bucket (local-s3)")
    parser.add_argument(
        "--placeholder-secrets",
        action="store_true",
        help=f"create missing ZenML secrets with the value {PLACEHOLDER} (offline registration)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints a JSON report of what was created/updated/unchanged."""
    args = build_parser().parse_args(argv)
    secrets = secret_values_from_env()
    if args.stack == LOCAL_STACK:
        from medloc_core.tracking import tracking_uri

        # The pipeline's embedded stack: the project's MLflow store unless a URI is given.
        spec = local_stack_spec(args.mlflow_uri or tracking_uri())
    elif args.stack == LOCAL_S3_STACK:
        if not args.s3_endpoint or not args.mlflow_uri:
            print("local-s3 needs --s3-endpoint and --mlflow-uri", file=sys.stderr)
            return 2
        spec = local_s3_stack_spec(
            args.s3_endpoint, args.bucket, args.mlflow_uri, prefix=args.prefix, secrets=secrets
        )
    else:
        spec = k8s_gpu_stack_spec(K8sGpuStackConfig.from_env(), secrets)

    from zenml.client import Client

    try:
        report = ensure_stack(Client(), spec, activate=args.set, placeholder_secrets=args.placeholder_secrets)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
