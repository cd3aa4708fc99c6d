# syntax=docker/dockerfile:1
# The operator image. The same image runs the short-lived agent pods that move checkpoint data
# (`checkpoint-operator agent ...`), so it carries the package and its dependencies and nothing
# else: not local mode (local/ and the `local` extra: kmock's API emulator, the CEL library),
# which .dockerignore leaves out of the build context.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a wheel of the project, installed with its dependencies into a venv -------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first, from pyproject.toml only (an empty README and package stand in), so that
# code and README changes keep this layer cached. The stubs and setuptools' build/ and egg-info
# go again: build/lib/ would keep the empty __init__.py (newer than the real one copied next),
# and the wheel would ship it.
COPY pyproject.toml ./
RUN mkdir -p operator/checkpoint_operator \
    && touch operator/checkpoint_operator/__init__.py README.md \
    && pip install . \
    && pip uninstall --yes checkpoint-operator \
    && rm -rf build operator README.md
COPY README.md ./
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps /wheels/*.whl \
    # the operator runs without an installer: no pip or setuptools in the image (25 MB less)
    && pip uninstall --yes --quiet pip setuptools \
    # bytecode now: at run time the root filesystem is read-only and PYTHONDONTWRITEBYTECODE is set
    && python -m compileall -q /opt/venv/lib \
    && checkpoint-operator --help > /dev/null \
    && python -c 'import checkpoint_operator.main, checkpoint_operator.agent.cli' \
    # local mode stayed out (a test imports the rest without it: tests/test_packaging.py)
    && python -c 'import importlib.util as u, sys; sys.exit(" ".join(m for m in ("checkpoint_operator.local", "kmock", "cel") if u.find_spec(m)) or None)'

# --- final: python slim, the venv, a numeric non-root user ----------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="checkpoint-operator" \
      org.opencontainers.image.description="Kubernetes operator that makes ML training checkpoints immutable cluster objects" \
      org.opencontainers.image.source="https://github.com/ckpt-dev/checkpoint-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/venv /opt/venv
# Nothing is written outside /tmp (an emptyDir in the chart), so the root filesystem can be
# read-only: HOME points there, and Python writes no bytecode.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
WORKDIR /tmp
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["checkpoint-operator"]
CMD ["run"]
