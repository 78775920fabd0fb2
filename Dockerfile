# syntax=docker/dockerfile:1
# tickprop worker image: `docker build -t tickprop .`, then `docker run tickprop`
# (configure with TICKPROP_* environment variables; see docs/deploy.md).
#
# Two stages: the builder verifies every dependency wheel against the sha256
# hashes in deploy/requirements.lock and builds tickprop's own wheel; the
# runtime stage installs only those wheels (no compiler, no build backend, no
# pip cache) and runs as an unprivileged user. No secret is baked in: Redis and
# Kafka credentials come from the environment at run time.

# Any glibc-based CPython 3.11-3.14 image (Debian bookworm or trixie based, x86_64
# or aarch64): deploy/requirements.lock holds the wheels and the conditional
# dependencies for each of them (see deploy/update_locks.py).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder ----
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first, so editing the code does not invalidate this layer.
COPY deploy/requirements.lock deploy/build-requirements.lock /src/deploy/
RUN pip download --no-deps --require-hashes --only-binary=:all: \
        --dest /wheels -r deploy/requirements.lock \
 && pip install --no-deps --require-hashes --only-binary=:all: \
        -r deploy/build-requirements.lock

COPY pyproject.toml README.md /src/
COPY model /src/model
COPY service /src/service
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels /src

# ---------------------------------------------------------------- runtime ----
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="tickprop" \
      org.opencontainers.image.description="Streaming trend prediction: an online FFBPN fed by Kafka ticks, state in Redis" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TICKPROP_METRICS_PORT=9108

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 tickprop \
 && useradd --system --uid 10001 --gid tickprop --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tickprop

COPY --from=builder /wheels /tmp/wheels
COPY deploy/requirements.lock /tmp/requirements.lock
# Install from the local, hash-checked wheels only (no index), then tickprop.
# --no-deps would hide a dependency missing from the lock: `pip check` fails the
# build if any installed package lacks one on this image's Python.
RUN pip install --no-index --find-links=/tmp/wheels --no-deps --require-hashes \
        -r /tmp/requirements.lock \
 && pip install --no-index --no-deps /tmp/wheels/tickprop-*.whl \
 && pip check \
 && rm -rf /tmp/wheels /tmp/requirements.lock

USER 10001:10001
WORKDIR /tmp

EXPOSE 9108

# slim has no curl: ask /healthz with the interpreter; urlopen raises (exit 1)
# on a refused connection, a timeout or any non-2xx status. `python3`, which
# every Python base has (Debian's own has no `python`).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TICKPROP_METRICS_PORT', '9108') + '/healthz', timeout=4)"]

ENTRYPOINT ["tickprop"]
CMD ["worker"]
