# Step image for medloc_training on Kubernetes GPU nodes (configs/medloc_training_k8s.yaml builds it through
# ZenML's `dockerfile:` setting; ZenML then adds the project code on top).
#
# CUDA comes from the torch wheel (it bundles the CUDA runtime as nvidia-* wheels); the node only needs the
# NVIDIA driver and device plugin. The pins below must equal pyproject.toml [project].dependencies:
# tests/test_infra_docker.py compares them.
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

# torch first, from the CUDA index: 2.13.0+cu128 satisfies the plain ==2.13.0 pin below, so the second
# install keeps it instead of pulling the CPU or another CUDA build.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

# BEGIN PINS (pyproject.toml [project].dependencies)
RUN pip install \
    "zenml[local]==0.98.0" \
    "mlflow==3.17.2" \
    "torch==2.13.0" \
    "transformers==5.23.0" \
    "trl==1.16.0" \
    "accelerate==1.15.0" \
    "peft==0.21.2" \
    "datasets==5.2.0" \
    "pandas==3.1.1" \
    "pyarrow" \
    "numpy" \
    "pillow" \
    "scipy" \
    "tokenizers" \
    "safetensors" \
    "tqdm" \
    "pyyaml" \
    "matplotlib" \
    "boto3==1.43.117" \
    "fastapi==0.141.1" \
    "opentelemetry-api==1.43.0" \
    "databricks-sdk==0.156.0" \
    "pydantic==2.12.5" \
    "s3fs==2026.9.0" \
    "aws-profile-manager==0.7.3" \
    "kubernetes==25.3.0" \
    "python-rapidjson==1.14" \
    "Jinja2==3.1.6"
# END PINS

WORKDIR /app
