# MLflow tracking server image for infra/k8s/40-mlflow-server.yaml: PostgreSQL backend, S3 artifacts.
#   docker build -f infra/docker/mlflow-server.Dockerfile -t registry.example.com/medloc/mlflow-server:3.17.2 .
# mlflow and boto3 match pyproject.toml, so clients and server speak the same MLflow version.
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN pip install "mlflow==3.17.2" "boto3==1.43.117" "psycopg2-binary==2.9.13" \
    && useradd --create-home --uid 10001 mlflow
USER 10001
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
