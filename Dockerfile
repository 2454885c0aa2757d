# syntax=docker/dockerfile:1
# The streamrec image: one console script, `streamrec <command>` (worker, simulate, sink,
# replay, tail, recs, features, ...). docker-compose.yml runs each role from this image.

# Build stage: wheels for streamrec and every dependency, compiled here if a dependency has
# no wheel for this platform, so the runtime image carries no compiler.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamrec ./streamrec
COPY streams ./streams
COPY models ./models
COPY producers ./producers
COPY consumers ./consumers
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# One BLAS thread per process: OpenBLAS worker threads spinning doubled CPU per event
# (issue 7); scale with more worker replicas instead.
ENV OPENBLAS_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --create-home --home-dir /home/streamrec \
    --shell /usr/sbin/nologin streamrec
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links=/tmp/wheels streamrec \
    && rm -rf /tmp/wheels
USER streamrec
WORKDIR /home/streamrec
# The worker's /metrics endpoint (STREAMREC_METRICS_PORT); bind it to 0.0.0.0 with
# STREAMREC_METRICS_HOST to make it reachable from outside the container.
EXPOSE 9464
ENTRYPOINT ["streamrec"]
CMD ["--help"]
