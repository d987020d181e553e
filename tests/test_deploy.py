"""The container and Kubernetes files: valid, and consistent with the service they deploy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.hardware import default_sizing
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted(p for p in (ROOT / "deploy" / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


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


def test_deployments_probe_the_real_endpoints_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_user = re.search(r"^USER (\d+)$", dockerfile, re.M).group(1)
    found = list(containers())
    assert found
    for name, pod, container in found:
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert container["startupProbe"]["httpGet"]["path"] == "/ready", name
        assert container["ports"][0]["containerPort"] == Settings().port, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == image_user
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
    assert "python -m service.weights check" in dockerfile
    assert 'CMD ["gunicorn", "-c", "python:service.gunicorn_conf"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    assert re.search(r"^USER \d+$", dockerfile, re.M), "a numeric non-root user, as the manifests require"
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
