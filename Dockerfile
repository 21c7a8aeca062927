# Step image for medloc_training on Kubernetes GPU nodes (configs/medloc_training_k8s.yaml builds it through
# ZenML's `dockerfile:` setting; ZenML then adds the project code on top).
#
# CUDA comes from the torch wheel (it bundles the CUDA runtime as nvidia-* wheels); the node only needs the
# NVIDIA driver and device plugin. Versions come from requirements.lock (tests/test_infra_docker.py checks that
# the image installs it and that it holds every pyproject.toml pin).
#
#   docker build -t registry.example.com/medloc/medloc-step:0.1.0 .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t medloc-step:cpu .
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    ZENML_ANALYTICS_OPT_IN=false \
    HF_HOME=/cache/huggingface

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the CUDA index: 2.13.0+cu128 satisfies the lock's plain ==2.13.0, so the lock install keeps
# it instead of pulling the CPU or another CUDA build.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

# Every version from the project's lock file (the same one make run, make test and CI install).
COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock

WORKDIR /app
