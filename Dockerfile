# syntax=docker/dockerfile:1
# layertap CPU image: the package installed as in the README (pip install -e .), ImageNet weights baked in.
#   docker build -t layertap .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 -t layertap:cuda .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -e .
# Weights at build time, by the same command that works outside Docker.
ENV TORCH_HOME=/opt/torch
RUN python -m service.weights download

FROM ${PYTHON_IMAGE}
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH TORCH_HOME=/opt/torch PYTHONUNBUFFERED=1 \
    LAYERTAP_ALLOW_DOWNLOAD=false LAYERTAP_PORT=8080
RUN useradd --system --uid 10001 --no-create-home layertap
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/torch /opt/torch
COPY --from=build /app /app
WORKDIR /app
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]
CMD ["gunicorn", "-c", "python:service.gunicorn_conf"]
