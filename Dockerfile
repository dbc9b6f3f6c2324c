# modeltap image: the package and its command on a slim Python base, running as a non-root user.
# The sidecar entry point, its ports and health check are set by the sidecar release; until then
# the image runs any `modeltap` command, e.g. `docker run --rm modeltap --help`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE CHANGELOG.md ./
COPY src ./src
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl \
    && useradd --system --uid 10001 --no-create-home modeltap
USER 10001
ENTRYPOINT ["modeltap"]
CMD ["--help"]
