"""The `kubeflow` stack: ZenML compiles medloc_training to a Kubeflow Pipelines (KFP 2.x) pipeline spec, offline,
with the GPU request on the training step alone.

The real path, end to end, with no cluster: `infra/stacks.py kubeflow` registers the stack (S3 artifact store on
a loopback moto server, the registry, the MLflow tracker), `zenml pipeline run medloc_training -c
configs/medloc_training_kubeflow.yaml` runs ZenML's Kubeflow orchestrator, which compiles the pipeline with
`kfp.compiler` and writes the spec under the ZenML config folder before it tries to upload it; the upload fails
(the API host is a closed port on 127.0.0.1) and the written spec is read back. The step image is given
(`skip_build`), since there is no image builder here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import env_for
from s3_server import free_port, moto_s3_server

pytest.importorskip("kfp", reason="the kubeflow integration's kfp package is part of requirements.lock")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "medloc_training_kubeflow.yaml"
BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.zenml_repository
def test_kubeflow_stack_compiles_a_kfp_spec_with_gpus_on_train_model_only(tmp_path: Path) -> None:
    zenml = str(BIN / "zenml")
    with moto_s3_server(bucket="medloc-artifacts") as s3:
        env = {
            **env_for(tmp_path, mlflow_uri=None),
            **s3.env,
            **s3.stack_env,
            "ZENML_AUTO_OPEN_DASHBOARD": "false",
            "MEDLOC_S3_PATH": "s3://medloc-artifacts/zenml",
            "MEDLOC_KUBEFLOW_HOSTNAME": f"http://127.0.0.1:{free_port()}/pipeline",  # nothing listens there
        }
        # A remote orchestrator needs a ZenML server that is not this client's own local one: start the local
        # server (store A), give it a service account, and connect to it as another client (store B) by API key.
        port = free_port()
        server_env = {**env, "ZENML_CONFIG_PATH": str(tmp_path / "server-config")}
        login = [zenml, "login", "--local", "--port", str(port), "--ip-address", "127.0.0.1"]
        logged_in = subprocess.run(
            login, cwd=REPO, env=server_env, capture_output=True, text=True, timeout=300
        )
        assert logged_in.returncode == 0, logged_in.stdout[-2000:] + logged_in.stderr[-2000:]
        key_file = tmp_path / "api-key"
        account = [zenml, "service-account", "create", "medloc-ci", "--output-file", str(key_file)]
        made = subprocess.run(account, cwd=REPO, env=server_env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
        env.update(
            ZENML_STORE_URL=f"http://127.0.0.1:{port}", ZENML_STORE_API_KEY=key_file.read_text().strip()
        )
        try:
            registered = subprocess.run(
                [str(BIN / "python"), "infra/stacks.py", "kubeflow", "--set", "--placeholder-secrets"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert registered.returncode == 0, registered.stdout + registered.stderr
            config = yaml.safe_load(CONFIG.read_text())
            config["settings"]["docker"] = {
                "parent_image": "registry.example.com/medloc/step:test",
                "skip_build": True,
            }
            run_config = tmp_path / "kubeflow.yaml"
            run_config.write_text(yaml.safe_dump(config, sort_keys=False))
            ran = subprocess.run(  # fails at the upload, after compiling
                [zenml, "pipeline", "run", "medloc_training", "-c", str(run_config)],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        finally:
            subprocess.run(
                [zenml, "logout", "--local"], cwd=REPO, env=server_env, capture_output=True, timeout=120
            )
    specs = list((tmp_path / "zenml" / "config").glob("kubeflow/*/pipelines/*.yaml"))
    assert len(specs) == 1, (ran.stdout + ran.stderr)[-3000:]
    spec = yaml.safe_load(specs[0].read_text())
    executors = spec["deploymentSpec"]["executors"]
    tasks = spec["root"]["dag"]["tasks"]
    steps = {task["taskInfo"]["name"]: task["componentRef"]["name"] for task in tasks.values()}
    assert set(steps) == {"ingest_data", "preprocess_data", "train_model", "evaluate_model", "register_model"}
    accelerators = {}
    for step, component in steps.items():
        executor = spec["components"][component]["executorLabel"]
        container = executors[executor]["container"]
        assert container["image"] == "registry.example.com/medloc/step:test"
        accelerators[step] = (container.get("resources") or {}).get("accelerator")
    train = executors[spec["components"][steps["train_model"]]["executorLabel"]]["container"]["resources"]
    assert train.get("resourceMemoryLimit") == "128G", train  # a Kubernetes quantity, as KFP requires
    gpu = accelerators.pop("train_model")
    assert gpu is not None, (ran.stdout + ran.stderr)[-3000:]
    assert gpu is not None and str(gpu.get("count", gpu.get("resourceCount"))) == "4", gpu
    assert gpu.get("resourceType", gpu.get("type")) == "nvidia.com/gpu", gpu
    assert set(accelerators.values()) == {None}, accelerators  # every other step runs without a GPU
    assert tasks[[k for k in tasks if tasks[k]["taskInfo"]["name"] == "train_model"][0]]["dependentTasks"]


def test_the_kubeflow_recipe_is_the_kubernetes_recipe():
    kubeflow = yaml.safe_load(CONFIG.read_text())
    k8s = yaml.safe_load((REPO / "configs" / "medloc_training_k8s.yaml").read_text())
    assert kubeflow["parameters"] == k8s["parameters"]
    assert kubeflow["environment"]["HF_HUB_OFFLINE"] == "1"
    gpus = kubeflow["steps"]["train_model"]["settings"]["resources"]["gpu_count"]
    assert gpus == kubeflow["parameters"]["training"]["accelerate"]["num_processes"]
    assert list(kubeflow["steps"]) == ["train_model"]  # no other step asks for anything


def test_memory_becomes_a_kubernetes_quantity():
    from infra.kubeflow_flavor import _quantity

    assert (_quantity("128GB"), _quantity("512MiB"), _quantity("2Gi")) == ("128G", "512Mi", "2Gi")
    with pytest.raises(ValueError, match="expected"):
        _quantity("lots")
