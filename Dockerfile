# modeltap sidecar image: a monitoring reverse proxy in front of a model server.
#
#   docker build -t modeltap .
#   docker run --rm -p 8000:8000 -p 9464:9464 -e MODELTAP_UPSTREAM=http://model:8080 modeltap
#
# Configured by environment: MODELTAP_UPSTREAM (required), any other MODELTAP_* setting
# (`docker run --rm modeltap --help` lists them) and the standard OTEL_* variables, which reach the
# process unchanged (e.g. OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME). Arguments after the image
# name are `modeltap sidecar` flags; other commands: `--entrypoint modeltap` (e.g. `profile`).
# See docs/sidecar.md.

# ---- build: the wheel, from the same files a source distribution holds ----------------------------
# With a C compiler here, so the wheel carries the compiled request path (modeltap._speedups);
# MODELTAP_REQUIRE_SPEEDUPS makes a failed compile fail the build instead of being skipped.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE CHANGELOG.md ./
COPY src ./src
RUN pip install --no-cache-dir build \
    && MODELTAP_REQUIRE_SPEEDUPS=1 python -m build --wheel --outdir /dist

# ---- runtime: the wheel only, no compiler, no build tools ------------------------------------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="modeltap" \
      org.opencontainers.image.description="Monitoring reverse proxy for ML model servers: drift, data quality and latency as OpenTelemetry" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/modeltap/modeltap" \
      org.opencontainers.image.documentation="https://github.com/modeltap/modeltap/blob/main/docs/sidecar.md"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist/*.whl /tmp/
# A fixed numeric uid/gid: Kubernetes can only verify `runAsNonRoot` for a numeric USER.
# /var/lib/modeltap is the one directory the user owns (a volume mounted there inherits it, e.g.
# for `modeltap profile` output); the sidecar itself writes only its monitor's sockets and lock,
# in a private directory under /tmp (with --read-only, add --tmpfs /tmp).
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl \
    && groupadd --gid 10001 modeltap \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/modeltap \
       --shell /usr/sbin/nologin modeltap \
    && mkdir -p /var/lib/modeltap && chown 10001:10001 /var/lib/modeltap
WORKDIR /var/lib/modeltap
# In a container both ports listen on every interface (the defaults outside one are 0.0.0.0 for the
# proxy and 127.0.0.1 for the admin port, which probes from outside the container could not reach).
ENV MODELTAP_HOST=0.0.0.0 \
    MODELTAP_PORT=8000 \
    MODELTAP_ADMIN_HOST=0.0.0.0 \
    MODELTAP_ADMIN_PORT=9464
USER 10001:10001
# 8000: the proxied model API; 9464: admin (/healthz /readyz /status /metrics and the status page).
EXPOSE 8000 9464
# SIGTERM starts the graceful drain: readiness fails, requests are served for drain_delay_s, in-flight
# ones get drain_timeout_s, telemetry is flushed within 5 s (defaults: 3 + 20 + 5 s, under 30 s).
STOPSIGNAL SIGTERM
# Liveness only (the process answers); /readyz is the one that follows the upstream. Python's stdlib,
# since slim images have no curl; it reads the admin port from the same variables as the sidecar and
# ignores any HTTP(S)_PROXY of the environment.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; h = os.environ.get('MODELTAP_ADMIN_HOST') or '127.0.0.1'; h = '127.0.0.1' if h in ('0.0.0.0', '::') else '[%s]' % h if ':' in h else h; r.build_opener(r.ProxyHandler({})).open('http://%s:%s/healthz' % (h, os.environ.get('MODELTAP_ADMIN_PORT') or '9464'), timeout=2)"]
ENTRYPOINT ["modeltap", "sidecar"]
