# syntax=docker/dockerfile:1
# layertap image, CPU by default. The package is installed as in the README (pip install -e .).
#   docker build -t layertap .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t layertap:cuda .
#   docker build --build-arg WEIGHTS=weights/my-resnet18.pt -t layertap:mine .   (see weights/README.md)
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# The torch wheel index: CPU-only wheels by default (no CUDA libraries: a much smaller image).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# `imagenet` downloads torchvision's weights now, into the image; or a state-dict path under weights/.
ARG WEIGHTS=imagenet
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch LAYERTAP_WEIGHTS=${WEIGHTS} LAYERTAP_DEVICE=cpu
WORKDIR /app
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
COPY client ./client
COPY models ./models
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -e .
COPY weights ./weights
# The same command works outside Docker; for imagenet it downloads into $TORCH_HOME.
RUN mkdir -p /opt/torch && python -m service.weights check

FROM ${PYTHON_IMAGE}
ARG WEIGHTS=imagenet
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH TORCH_HOME=/opt/torch PYTHONUNBUFFERED=1 \
    LAYERTAP_WEIGHTS=${WEIGHTS} LAYERTAP_ALLOW_DOWNLOAD=false LAYERTAP_PORT=8080
RUN useradd --system --uid 10001 --no-create-home layertap
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/torch /opt/torch
COPY --from=build /app /app
WORKDIR /app
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]
# Exec form: gunicorn is PID 1 and receives SIGTERM itself (graceful shutdown). Logs go to stdout.
CMD ["gunicorn", "-c", "python:service.gunicorn_conf"]
