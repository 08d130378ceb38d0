# StreamForge image: the `streamforge` CLI (supervisor + Bytewax 0.21.1) and the bundled
# pipelines, configs and sample data. deploy/k8s/statefulset.yaml runs it as
# `streamforge run PIPELINE --config /etc/streamforge/pipeline.yaml` (config from a ConfigMap,
# recovery partitions on the volume at /var/lib/streamforge).
#   docker build -t streamforge:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dataflows/ dataflows/
COPY recovery/ recovery/
COPY streamforge_ops/ streamforge_ops/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1
RUN groupadd --gid 10001 streamforge \
 && useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin streamforge
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels streamforge && rm -rf /wheels
WORKDIR /app
# Relative paths in config/*.yaml (source files, flow modules) resolve against /app.
COPY --chown=10001:10001 config/ config/
COPY --chown=10001:10001 data/ data/
COPY --chown=10001:10001 deploy/ deploy/
RUN mkdir -p /var/lib/streamforge && chown 10001:10001 /app /var/lib/streamforge
USER 10001:10001
# 9464: supervisor /metrics /healthz /readyz; 3030: Bytewax dataflow API (/metrics of the flow);
# 2101: the Bytewax cluster port between pods (deploy render --replicas N)
EXPOSE 9464 3030 2101
VOLUME ["/var/lib/streamforge"]
ENTRYPOINT ["streamforge"]
CMD ["--help"]
