# syntax=docker/dockerfile:1
# layertap image, CPU by default: the server installed as a package (not editable), the client beside it.
#   docker build -t layertap .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t layertap:cuda .
#   docker build --build-arg WEIGHTS=weights/my-resnet18.pt -t layertap:mine .   (see weights/README.md)
#   docker build --build-arg MODELS=resnet18,clip_vit_b32,dinov2_small -t layertap:embed .   (their weights baked in)
# `make container-test` builds it, runs it and checks it from outside (tests/container/).
ARG PYTHON_IMAGE=python:3.11-slim

# The dependencies alone, from the two pyproject.toml files: a change to the code reuses this stage
# instead of reinstalling torch. The runtime is built FROM it, not from a fresh base with a copy of
# /opt/venv: a copy would store the 5.5 GB CUDA build of torch twice, and the builder needs room for
# the layer, its blob and the container it came from at once (peaks of 34 GB with a copy, 21 without).
FROM ${PYTHON_IMAGE} AS deps
# The torch wheel index: CPU-only wheels by default (no CUDA libraries: a much smaller image). It is
# recorded in the image's history, as every build argument a RUN uses: put no credentials in it.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY client/pyproject.toml ./client/
# The model sources beside torchvision (timm, transformers, open_clip) are extras, installed here too.
RUN python -c "import sys, tomllib; [print(d) for f in sys.argv[1:] for d in tomllib.load(open(f, 'rb'))['project']['dependencies']]" \
        pyproject.toml client/pyproject.toml > requirements.txt \
    && python -c "import tomllib; extras = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; [print(d) for x in ('timm', 'transformers', 'open_clip') for d in extras[x]]" \
        >> requirements.txt \
    && pip install --extra-index-url "${TORCH_INDEX_URL}" -r requirements.txt

# The server and the client as wheels (the server's carries the model repository, models/, as
# service/models/), installed here to check the weights with the installed package, as the service will run.
FROM deps AS build
COPY README.md ./
COPY service ./service
COPY models ./models
COPY client ./client
RUN pip wheel --no-deps --wheel-dir /wheels . ./client && pip install --no-deps /wheels/*.whl
# Weights last, so that other weights reuse every layer above. `imagenet` downloads the entries'
# pretrained weights now: torchvision's into $TORCH_HOME, timm's, transformers' and open_clip's into
# $HF_HOME; a state-dict path under weights/ is copied to the same relative path under /app, the
# runtime's working directory (outside /src, whose service/ would shadow the package).
ARG WEIGHTS=imagenet
ARG MODELS=resnet18
ENV TORCH_HOME=/opt/torch HF_HOME=/opt/huggingface LAYERTAP_WEIGHTS=${WEIGHTS} LAYERTAP_MODELS=${MODELS} LAYERTAP_DEVICE=cpu
COPY weights ./weights
WORKDIR /app
RUN mkdir -p /opt/torch /opt/huggingface \
    && case "${WEIGHTS}" in \
        imagenet|random) ;; \
        *) mkdir -p "$(dirname "${WEIGHTS}")" && cp "/src/${WEIGHTS}" "${WEIGHTS}" ;; \
    esac \
    && python -m service weights check

# The runtime: the dependencies' stage (its /src holds only the two pyproject.toml files and the
# requirements read from them), the two wheels installed into its virtual environment, the torch
# cache and the weights file.
FROM deps
ARG WEIGHTS=imagenet
ARG MODELS=resnet18
ENV TORCH_HOME=/opt/torch HF_HOME=/opt/huggingface PYTHONUNBUFFERED=1 \
    LAYERTAP_WEIGHTS=${WEIGHTS} LAYERTAP_MODELS=${MODELS} LAYERTAP_ALLOW_DOWNLOAD=false LAYERTAP_PORT=8080
RUN groupadd --gid 10001 layertap \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin layertap
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps --no-index /tmp/wheels/*.whl && rm -r /tmp/wheels && pip check
COPY --from=build /opt/torch /opt/torch
COPY --from=build /opt/huggingface /opt/huggingface
COPY --from=build /app /app
WORKDIR /app
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]
# Exec form: gunicorn is PID 1 and receives SIGTERM itself (graceful shutdown). Logs go to stdout.
CMD ["gunicorn", "-c", "python:service.gunicorn_conf"]
