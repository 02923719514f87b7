# rmeval task image: Beaker tasks and container-based GPU runners.
#
# The base is the official PyTorch CUDA runtime image, pinned by tag (for humans) and by
# digest (what the builder actually pulls). The digest is the linux/amd64 image manifest of
# pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime. To move the pin, pull the new tag and copy
# its digest from `docker buildx imagetools inspect pytorch/pytorch:<tag>`.
#
# No secret is baked in: Google credentials (GOOGLE_SERVICE_ACCOUNT), BEAKER_TOKEN and
# HF_TOKEN are given to the container at run time (Beaker secrets / runner env) and read by
# rmeval/credentials.py. No EasyLM, gsutil or gcloud: rmeval reads checkpoints itself.
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime@sha256:417bd75df6365104c283ea4c1651fb3530d9eb5a4c2fafa51943cff2a94e6385

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Our own code comes from the build context only (see .dockerignore), never from the network.
WORKDIR /opt/rmeval-src
COPY pyproject.toml README.md requirements.lock ./
COPY rmeval ./rmeval
# The context has no .git, so the version comes in as a build argument (`make image` passes
# the checkout's); without it setuptools-scm falls back to 0.0.0.
ARG RMEVAL_VERSION=""
# The dependencies come from requirements.lock (every version pinned, every file's hash
# checked), rmeval itself without dependencies. torch is not in the lock: it is the base
# image's CUDA build (the lock's "cuda" variant), which satisfies pyproject's torch>=2.6;
# `pip check` fails the build if anything came out inconsistent. The lock stays in the image
# (RMEVAL_LOCK_FILE): provenance.json records its hash and any package that differs from it.
RUN if [ -n "$RMEVAL_VERSION" ]; then export SETUPTOOLS_SCM_PRETEND_VERSION_FOR_RMEVAL="$RMEVAL_VERSION"; fi \
    && python -m pip install --require-hashes --no-deps -r requirements.lock \
    && python -m pip install --no-deps . \
    && python -m pip check \
    && python -c "import torch; assert torch.version.cuda, 'torch lost its CUDA build'" \
    && rmeval --version \
    && mkdir -p /opt/rmeval && cp requirements.lock /opt/rmeval/requirements.lock \
    && cd / && rm -rf /opt/rmeval-src
ENV RMEVAL_LOCK_FILE=/opt/rmeval/requirements.lock

# Unprivileged user; caches and scratch under a writable temp dir.
# A high fixed UID/GID so it cannot clash with a user the base image already has.
RUN groupadd --gid 10001 rmeval \
    && useradd --uid 10001 --gid rmeval --create-home --shell /usr/sbin/nologin rmeval \
    && mkdir -p /tmp/rmeval \
    && chown rmeval:rmeval /tmp/rmeval
ENV HF_HOME=/tmp/rmeval/hf \
    HF_HUB_CACHE=/tmp/rmeval/hf/hub \
    HF_DATASETS_CACHE=/tmp/rmeval/hf/datasets \
    XDG_CACHE_HOME=/tmp/rmeval/cache \
    MPLCONFIGDIR=/tmp/rmeval/matplotlib \
    TMPDIR=/tmp/rmeval
USER 10001:10001
WORKDIR /tmp/rmeval

ENTRYPOINT ["rmeval"]
CMD ["--help"]
