# syntax=docker/dockerfile:1
# The gateway in a slim image: `docker build -t serverless-gateway .`
# With no settings it runs on its embedded defaults (PostgreSQL, a local Ray head, file storage) under /data;
# set GATEWAY_DATABASE_URL and GATEWAY_RAY_ADDRESS to use your own. Give Ray shared memory: --shm-size=2g.
# linux/amd64 only: pgserver (the embedded PostgreSQL) has no Linux arm64 wheel (--platform linux/amd64 on arm).

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the lock file, so code changes do not reinstall them. The lock pins every version with
# the hashes of its files (scripts/lock.sh), and pip refuses anything else.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
# A regular (non-editable) install: the wheel carries the migrations as data files under /opt/venv/share.
RUN pip install --no-deps . && serverless-gateway --version

FROM python:3.11-slim
LABEL org.opencontainers.image.title="serverless-gateway" \
      org.opencontainers.image.description="Run uploaded Python functions as jobs on Ray (Qiskit Serverless REST API)" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini runs as PID 1: it forwards SIGTERM to the gateway and reaps the orphans Ray's processes leave behind.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home --home-dir /home/gateway gateway \
    && mkdir -p /data \
    && chown gateway:gateway /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_DATA_DIR=/data \
    RAY_USAGE_STATS_ENABLED=0
USER gateway
WORKDIR /home/gateway
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/liveness/', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "serverless-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
