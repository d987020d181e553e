"""The container and Kubernetes files: valid, and consistent with the service they deploy."""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.core.hardware import default_sizing
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted(p for p in (ROOT / "deploy" / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
KSERVE_MANIFESTS = sorted((ROOT / "deploy" / "kserve").glob("*.yaml"))
KSERVE_VALIDATE = ROOT / "deploy" / "kserve" / "validate.py"


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(manifest):
    result = subprocess.run([str(KUBERNETES_VALIDATE), "--strict", str(manifest)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def containers():
    for manifest in MANIFESTS:
        document = yaml.safe_load(manifest.read_text())
        if document["kind"] == "Deployment":
            pod = document["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield manifest.name, pod, container


def image_user() -> str:
    """The numeric user the Dockerfile's image runs as."""
    return re.search(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)


def test_deployments_probe_the_real_endpoints_as_non_root():
    image_user_id = image_user()
    found = list(containers())
    assert found
    for name, pod, container in found:
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert container["startupProbe"]["httpGet"]["path"] == "/ready", name
        assert container["ports"][0]["containerPort"] == Settings().port, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == image_user_id
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        env = {e["name"]: e.get("value") for e in container["env"]}
        if env.get("LAYERTAP_DEVICE") == "cuda":  # sized by the device-aware defaults: a worker per 2 pod CPUs
            cpus = int(container["resources"]["limits"]["cpu"])
            assert "LAYERTAP_WORKERS" not in env and default_sizing(cuda=True, cores=cpus).workers == cpus // 2
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        else:
            assert env["LAYERTAP_WORKERS"] == "1", "one worker per pod, using all its cores"
        # gunicorn's graceful timeout plus the preStop pause must fit in the grace period
        assert pod["terminationGracePeriodSeconds"] >= 30 + 5
        for variable in env:
            if variable.startswith("LAYERTAP_"):
                assert variable[len("LAYERTAP_") :].lower() in Settings.model_fields, variable


def test_dockerfile_is_linted_and_keeps_its_contract():
    """`make container-test` builds and runs the image; this is the part that needs no engine."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-e ." not in dockerfile, "the image installs the wheel, not the source tree"
    assert "python -m service weights check" in dockerfile
    assert 'CMD ["gunicorn", "-c", "python:service.gunicorn_conf"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    assert re.search(r"^USER \d+$", dockerfile, re.M), "a numeric non-root user, as the manifests require"
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@functools.cache
def kserve_validator():
    """deploy/kserve/validate.py, imported from its path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("kserve_validate", KSERVE_VALIDATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inference_service() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())


@pytest.mark.parametrize("manifest", KSERVE_MANIFESTS, ids=lambda p: p.name)
def test_kserve_manifest_is_valid(manifest):
    """As `make lint` runs it: kubernetes-validate has no schema for the InferenceService custom resource."""
    result = subprocess.run([sys.executable, str(KSERVE_VALIDATE), str(manifest)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kserve_validator_rejects_a_misspelt_field(tmp_path):
    document = inference_service()
    get = document["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"]
    get["pathh"] = get.pop("path")
    manifest = tmp_path / "misspelt.yaml"
    manifest.write_text(yaml.safe_dump(document))
    result = subprocess.run([sys.executable, str(KSERVE_VALIDATE), str(manifest)], capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "spec.predictor.containers[0].readinessProbe.httpGet.pathh: unknown field" in result.stdout
    assert "did you mean path?" in result.stdout


def test_kserve_validator_rejects_wrong_types_and_missing_fields():
    validate = kserve_validator().validate
    document = inference_service()
    container = document["spec"]["predictor"]["containers"][0]
    container["ports"][0]["containerPort"] = "eight"
    container["resources"]["limits"]["cpu"] = 2  # a quantity is a string in the models: quote it
    del container["livenessProbe"]["httpGet"]["port"]
    document["kind"] = "Deployment"
    errors = "\n".join(validate(document))
    assert "spec.predictor.containers[0].ports[0].containerPort: expected int, got str 'eight'" in errors
    assert "spec.predictor.containers[0].resources.limits.cpu: expected str" in errors
    assert "spec.predictor.containers[0].livenessProbe.httpGet.port: required" in errors
    assert "apiVersion/kind" in errors
    assert len(errors.splitlines()) == 4, errors
    assert validate(inference_service()) == []


def test_kserve_predictor_serves_the_image_of_the_deployment():
    """The Open Inference Protocol's health routes on the container port; otherwise deploy/k8s/deployment.yaml's pod."""
    document = inference_service()
    predictor = document["spec"]["predictor"]
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container", "the container KServe treats as the custom predictor"
    port = container["ports"][0]
    assert port["containerPort"] == Settings().port
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"]["path"] == path, probe
        assert container[probe]["httpGet"]["port"] in (port["containerPort"], port["name"]), probe
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.pop("PROTOCOL") == "v2", "KServe's protocol variable for a custom predictor"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]

    [(_, pod, deployed)] = [(name, pod, c) for name, pod, c in containers() if name == "deployment.yaml"]
    assert container["image"] == deployed["image"]
    assert str(predictor["securityContext"]["runAsUser"]) == image_user()
    assert predictor["securityContext"] == pod["securityContext"]
    assert container["securityContext"] == deployed["securityContext"]
    assert container["resources"] == deployed["resources"]
    assert env == {e["name"]: e.get("value") for e in deployed["env"]}, "the settings of the CPU deployment"
    assert predictor["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"]


def test_the_ingress_in_front_agrees_with_the_service_limits():
    """docs/robustness.md: the proxy limits per client and buffers uploads; its sizes and timeouts are the service's."""
    ingress = yaml.safe_load((ROOT / "deploy" / "k8s" / "ingress.yaml").read_text())
    annotations = {k.rpartition("/")[2]: v for k, v in ingress["metadata"]["annotations"].items()}
    settings = Settings()
    assert int(annotations["proxy-body-size"].removesuffix("m")) * 1024 * 1024 == settings.max_body_bytes
    assert int(annotations["proxy-read-timeout"]) > settings.request_timeout_s
    assert annotations["proxy-request-buffering"] == "on" and int(annotations["limit-connections"]) > 0
    assert "ingress.yaml" in (ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text()
