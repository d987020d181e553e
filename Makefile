# layertap — `make run` serves, `make test` tests. Both create or refresh .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

IMAGE  ?= layertap

.PHONY: install run test container-test container-clean lint bench stress stress-short docker-build docker-run clean

install: $(STAMP)  ## create or refresh .venv (a no-op when neither pyproject.toml has changed)

# The server with its test tools, and the client (its own distribution, client/) for `layertap embed`.
$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' -e ./client
	touch $(STAMP)

run: install  ## serve on LAYERTAP_HOST:LAYERTAP_PORT (default 0.0.0.0:8080) until SIGTERM or Ctrl-C
	exec $(BIN)/gunicorn -c python:service.gunicorn_conf

test: install  ## the whole test suite, offline (the container test is separate: it builds a 6 GB image)
	$(BIN)/pytest

container-test: install  ## build the image with docker or podman, run it, check it from outside, remove it
	$(BIN)/pytest -m container tests/container

container-clean: install  ## remove what an interrupted container-test left (labelled layertap.container-test)
	$(BIN)/python -m tests.container.harness clean

lint: install  ## ruff, the import contracts, the docs' links and tables, hadolint, kubernetes-validate, KServe's models
	$(BIN)/ruff check service tests bench stress client deploy docs
	$(BIN)/ruff format --check service tests bench stress client deploy docs
	$(BIN)/lint-imports  # the layers of service/ (pyproject.toml, [tool.importlinter])
	$(BIN)/python docs/tools.py check-links
	$(BIN)/python docs/tools.py layout --check
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet $$(ls deploy/k8s/*.yaml | grep -v kustomization)
	$(BIN)/python deploy/kserve/validate.py deploy/kserve/*.yaml  # a custom resource: no schema in kubernetes-validate

# `make bench DEVICE=cuda`: the GPU benchmark instead (bench/gpu.py; under 5 minutes on one H100/H200).
bench: install  ## the service vs the in-process limit and TorchServe, a row per model entry, op layers' cost, Ray vs embed
ifeq ($(DEVICE),cuda)
	$(BIN)/python -m bench.gpu
else
	$(BIN)/python -m bench
	$(BIN)/python -m bench.models
	$(BIN)/python -m bench.ops
	$(BIN)/python -m bench.ray
endif

stress: install  ## bad inputs, 3× overload, 5,000-request soak, a killed worker; prints a summary table
	$(BIN)/python -m stress

stress-short: install  ## the same drills, smaller and shorter (what CI runs)
	$(BIN)/python -m stress --short

docker-build:  ## the CPU image, ImageNet weights baked in (needs a Docker engine)
	docker build -t $(IMAGE) .

docker-run:  ## serve the image on localhost:8080
	docker run --rm -p 8080:8080 $(IMAGE)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
