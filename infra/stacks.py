"""Register MedLoc's ZenML stacks idempotently: ``local``, ``local-s3``, ``k8s-gpu`` and ``kubeflow``.

Run from the repository root against whatever ZenML store is active (the embedded SQLite store, or a ZenML
server after ``zenml login``)::

    python infra/stacks.py local   [--set]      # default orchestrator + local artifact store + MLflow
    python infra/stacks.py local-s3 --s3-endpoint http://127.0.0.1:9000 --bucket medloc-artifacts \
        --mlflow-uri http://127.0.0.1:5000 [--set]   # local orchestrator, S3 artifacts, MLflow server
    python infra/stacks.py k8s-gpu [--set]      # Kubernetes orchestrator, S3, registry, kaniko, MLflow server
    python infra/stacks.py kubeflow [--set]     # Kubeflow Pipelines orchestrator, the same S3/registry/MLflow

Every component, secret and stack is created when missing, updated when its configuration differs, and left
alone when it already matches, so running the script twice changes nothing the second time. Secret *values*
are read from the environment only (never from files in the repository); see ``infra/README.md``.

Values for ``k8s-gpu`` and ``kubeflow`` come from the environment (``MEDLOC_*`` variables, listed in ``K8sGpuStackConfig``);
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
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python infra/stacks.py`: make the repository root importable
    # ... instead of infra/ itself, so that infra's modules have one name (ZenML records a custom flavor's module)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.stack_specs import (  # noqa: E402
    K8S_GPU_STACK,
    KUBEFLOW_STACK,
    LOCAL_S3_STACK,
    LOCAL_STACK,
    PLACEHOLDER,
    SECRET_ENV,
    SECRET_KEYS,
    ComponentSpec,
    K8sGpuStackConfig,
    StackSpec,
    component_types,
    k8s_gpu_stack_spec,
    kubeflow_stack_spec,
    local_s3_stack_spec,
    local_stack_spec,
    secret_values_from_env,
)

logger = logging.getLogger("medloc.infra.stacks")

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"


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
    component_type = component_types()(spec.type)
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


def ensure_flavor(client: Any, component_type: str, source: str) -> str:
    """Register the custom flavor at ``source`` (``module.Class``) unless a flavor of its name exists."""
    from zenml.utils import source_utils

    # ZenML records the class's module relative to the source root: the repository, whatever started us
    source_utils.set_custom_source_root(str(Path(__file__).resolve().parents[1]))
    name = source_utils.load(source)().name
    types = component_types()
    try:
        client.get_flavor_by_name_and_type(name=name, component_type=types(component_type))
        return UNCHANGED
    except KeyError:
        client.create_flavor(source=source, component_type=types(component_type))
        return CREATED


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
                f"values were given; export {' and '.join(SECRET_ENV[name])}, or create it with "
                f"`zenml secret create {name} "
                + " ".join(f"--{key}=..." for key in SECRET_KEYS[name])
                + "`, or pass --placeholder-secrets"
            )
    for component_type, source in spec.flavors:
        report[f"flavor:{source.rsplit('.', 1)[-1]}"] = ensure_flavor(client, component_type, source)
    for component in spec.components:
        report[f"{component.type}:{component.name}"] = ensure_component(client, component)

    types = component_types()
    wanted = {types(c.type): c.name for c in spec.components}
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
    parser.add_argument("stack", choices=[LOCAL_STACK, LOCAL_S3_STACK, K8S_GPU_STACK, KUBEFLOW_STACK])
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
    elif args.stack == KUBEFLOW_STACK:
        spec = kubeflow_stack_spec(K8sGpuStackConfig.from_env(), secrets)
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
    try:
        sys.exit(main())
    except ModuleNotFoundError as exc:  # run with a Python that lacks the project's packages
        sys.exit(
            f"{sys.argv[0]}: needs the project's Python ({exc.name} is missing): .venv/bin/python {sys.argv[0]} ..."
        )
