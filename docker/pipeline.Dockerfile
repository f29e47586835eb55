# The feedrank Python package (Rust extension built by maturin) with the Dagster code location.
# Used by the dagster-webserver, dagster-daemon and Celery worker services, for `feedrank demo-data`,
# and as the image of the Kubernetes path (docs/scaling.md).
# Build context: the repository root (docker compose build pipeline).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --quiet maturin==1.16.0
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml ./
COPY rust ./rust
COPY api ./api
COPY migrations ./migrations
COPY python ./python
RUN /opt/build/bin/maturin build --release --locked --out /wheels

FROM python:3.11-slim-bookworm
WORKDIR /app
COPY requirements-dev.txt ./
COPY --from=build /wheels /wheels
# The pinned versions of requirements-dev.txt, then the wheel with its pipeline extras (Celery, S3
# and Kubernetes included: one image for the webserver, the daemon, Celery workers and step Jobs).
RUN pip install --no-cache-dir -r requirements-dev.txt \
    && pip install --no-cache-dir "$(ls /wheels/feedrank-*.whl)[pipeline,distributed,k8s]"
COPY dagster_pipeline ./dagster_pipeline
COPY scripts ./scripts
ENV PYTHONPATH=/app DAGSTER_HOME=/opt/dagster/home
# The instance (PostgreSQL storage named by DAGSTER_POSTGRES_URL, the queued run coordinator).
COPY deploy/dagster.yaml /opt/dagster/home/dagster.yaml
EXPOSE 3000
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-m", "dagster_pipeline.definitions"]
