"""Container plumbing for tests/container: find an engine, make a base image where none can be pulled, build, clean up.

Engines: docker when its daemon answers (``docker info``), else podman. Podman runs with the OCI
runtime ``runc`` where it is installed (crun, its default, fails on hosts with a mixed cgroup v1/v2
layout) and with the caller's own open-file and process limits, which root cannot raise in every
sandbox. Both are passed on our own command lines only: the user's containers.conf is left alone.

Where the Dockerfile's base image (``ARG PYTHON_IMAGE``) can be neither found nor pulled, a
stand-in is made with mmdebstrap: the Debian release whose python3 is the base's Python version,
with this machine's pip configuration (``pip config list``, the environment's PIP_* included) and
the files it names (CA bundle, constraints) copied in, so that a build reaches packages the way
this machine's pip does; the local folders and ``file://`` indexes it names are mounted read-only
into the build. It is passed to the build as ``--build-arg PYTHON_IMAGE=...`` under a name that is
clearly ours, so no image called ``python:...`` is ever faked. Where the Dockerfile's default
torch index does not answer, the local index that holds torch is passed as ``TORCH_INDEX_URL``.

Environment: ``LAYERTAP_CONTAINER_ENGINE`` (docker or podman) forces an engine,
``LAYERTAP_CONTAINER_RUNTIME`` podman's OCI runtime, ``LAYERTAP_CONTAINER_MIN_FREE_GIB`` the free
space checked for before building (see NEEDED_FREE_GIB_CUDA_TORCH).
"""

from __future__ import annotations

import ast
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
# Every container and image made here carries this label (and a name starting with NAME_PREFIX).
LABEL = "layertap.container-test"
NAME_PREFIX = "layertap-container-test"
BUILD_TIMEOUT_S = 1200
# Free space a build with the CUDA build of torch (what the local index holds where the CPU index does not
# answer) needs where the engine stores images: at its peak the builder holds three copies of the 5.5 GB
# torch layer (the build container, the blob being committed, the new layer). With podman and overlay,
# two builds saw the free space fall by 21.8 GiB (sampled twice a second, as build() does) and one by
# 20.4 GiB (df once a second, which can miss the peak). The check stops, in seconds and naming both
# figures, a build that would fail minutes in with "no space left on device" (the test skips then: a
# machine may lack the disk as it may lack an engine). LAYERTAP_CONTAINER_MIN_FREE_GIB overrides it;
# builds from the CPU index (a far smaller image) are not checked.
NEEDED_FREE_GIB_CUDA_TORCH = 22.0
# What each run measured (engine, build and stop times, image size, leftovers): conftest.py prints it.
REPORTS: list[dict] = []
# The Debian release whose python3 is each Python version (what the official slim images are built on).
DEBIAN_FOR_PYTHON = {"3.11": "bookworm", "3.13": "trixie", "3.9": "bullseye"}
DEBIAN_CODENAMES = ("bullseye", "bookworm", "trixie")
# pip options that describe where packages come from; others (user, target, ...) would not fit a venv.
PIP_OPTIONS_KEPT = (
    "index-url",
    "extra-index-url",
    "find-links",
    "trusted-host",
    "cert",
    "client-cert",
    "constraint",
    "default-timeout",
    "retries",
    "proxy",
    "disable-pip-version-check",
    "no-index",
    "only-binary",
    "prefer-binary",
)


class EngineError(RuntimeError):
    """The engine is there but a step failed; the message carries its output."""


class NoRoom(EngineError):
    """The engine's storage has less free space than the build needs (the message starts "needs free disk")."""


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class Engine:
    name: str  # "docker" or "podman"
    argv: list[str]  # the command with global options, e.g. ["podman", "--runtime", "runc"]
    limits: list[str] = field(default_factory=list)  # --ulimit options for build and run

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self.argv, *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EngineError(f"{' '.join(command)} ran over {timeout} s") from exc
        if check and done.returncode != 0:
            raise EngineError(
                f"{' '.join(command)} exited with {done.returncode}:\n{(done.stderr or done.stdout)[-4000:]}"
            )
        return done

    def image_exists(self, image: str) -> bool:
        return self("image", "inspect", image, check=False).returncode == 0

    def image_ids(self) -> set[str]:
        """Every image, intermediate build layers included (podman keeps them as untagged images)."""
        return set(self("images", "--all", "--quiet", "--no-trunc").stdout.split())

    def inspect(self, what: str) -> dict:
        return json.loads(self("inspect", what).stdout)[0]

    def storage_root(self) -> Path | None:
        """Where the engine keeps images (podman's graph root, docker's root dir); None if not on this machine."""
        field_ = "{{.Store.GraphRoot}}" if self.name == "podman" else "{{.DockerRootDir}}"
        done = self("info", "--format", field_, check=False)
        root = Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None
        return root if root is not None and root.exists() else None

    def labelled_images(self) -> set[str]:
        """Images made here: the label is on the image and on each build layer (podman; docker's classic builder)."""
        return set(self("images", "--all", "--quiet", "--no-trunc", "--filter", f"label={LABEL}").stdout.split())

    def remove_images(self, images: list[str], force: bool = False) -> list[str]:
        """Remove what can be removed (children before parents: repeat while progress), return what could not.

        ``force`` also removes the containers that use them (with podman, a build's leftover working containers).
        """
        left = [image for image in images if self.image_exists(image)]
        flags = ["--force"] if force else []
        while left:
            still = [image for image in left if self("rmi", *flags, image, check=False).returncode != 0]
            still = [image for image in still if self.image_exists(image)]
            if len(still) == len(left):
                return still
            left = still
        return []


def _answers(argv: list[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run([*argv, "info"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stderr or done.stdout).strip()[-2000:]


def _podman_limits() -> list[str]:
    """This process's own limits: podman's defaults (nofile 1048576) exceed what some sandboxes let root set."""
    options = []
    for name, which, most in (("nofile", resource.RLIMIT_NOFILE, 1048576), ("nproc", resource.RLIMIT_NPROC, 32768)):
        soft, hard = resource.getrlimit(which)
        hard = most if hard == resource.RLIM_INFINITY else min(hard, most)
        soft = hard if soft == resource.RLIM_INFINITY else min(soft, hard)
        options.append(f"--ulimit={name}={soft}:{hard}")
    return options


def find_engine() -> Engine | None:
    """docker if its daemon answers, else podman; None when neither is installed and working.

    A podman that is installed but fails ``podman info`` raises: that is a broken setup, not an absent one.
    """
    wanted = os.environ.get("LAYERTAP_CONTAINER_ENGINE")
    if wanted not in (None, "", "docker", "podman"):
        raise EngineError(f"LAYERTAP_CONTAINER_ENGINE={wanted!r}: use docker or podman")
    if wanted in (None, "", "docker") and shutil.which("docker"):
        ok, message = _answers(["docker"])
        if ok:
            return Engine("docker", ["docker"])
        if wanted == "docker":
            raise EngineError(f"docker does not answer: {message}")
    if wanted in (None, "", "podman") and shutil.which("podman"):
        runtime = os.environ.get("LAYERTAP_CONTAINER_RUNTIME") or ("runc" if shutil.which("runc") else "")
        argv = ["podman", "--runtime", runtime] if runtime else ["podman"]
        ok, message = _answers(argv)
        if not ok:
            raise EngineError(f"podman is installed but `{' '.join(argv)} info` fails: {message}")
        return Engine("podman", argv, _podman_limits())
    return None


def dockerfile_default(arg: str) -> str:
    """The default of ``ARG <arg>=...`` in the Dockerfile."""
    match = re.search(rf"^ARG {arg}=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    if not match:
        raise EngineError(f"the Dockerfile has no `ARG {arg}=<default>`")
    return match.group(1)


# ---------------------------------------------------------------------------------------------
# Where the build gets Python packages: this machine's pip configuration.


def host_pip_config() -> dict[str, str]:
    """pip's effective options on this machine (its config files, then PIP_* variables over them)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    files: dict[str, str] = {}
    environment: dict[str, str] = {}
    for line in listed.splitlines():
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        section, _, option = key.rpartition(".")
        value = str(ast.literal_eval(raw))
        if section == ":env:":
            environment[option] = value
        elif section in ("global", "install"):
            files[option] = value
    options = {k: v for k, v in {**files, **environment}.items() if k in PIP_OPTIONS_KEPT}
    if "cert" not in options:  # pip's requests honours these when no cert is configured
        for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
            if os.environ.get(variable) and Path(os.environ[variable]).is_file():
                options["cert"] = os.environ[variable]
                break
    return options


def _local_dir(location: str) -> Path | None:
    """The local folder behind a find-links entry or a ``file://`` index, if it is one."""
    if location.startswith("file:"):
        location = unquote(urlparse(location).path)
    elif "://" in location:
        return None
    path = Path(location)
    return path if path.is_dir() else None


def pip_files_and_folders(options: dict[str, str]) -> tuple[list[Path], list[Path]]:
    """The files the options name (to copy into a base image) and the folders (to mount into a build)."""
    files = [Path(options[k]) for k in ("cert", "client-cert", "constraint") if k in options]
    folders: list[Path] = []
    for key in ("index-url", "extra-index-url", "find-links"):
        for location in options.get(key, "").split():
            folder = _local_dir(location)
            if folder is None:
                continue
            # A PEP 503 index at <root>/simple usually links its files as ../../files/...: mount <root>.
            folder = folder.parent if folder.name == "simple" else folder
            if folder not in folders:
                folders.append(folder)
    return [f for f in files if f.is_file()], folders


def local_torch_index(options: dict[str, str]) -> str | None:
    """The first ``file://`` index in the pip options that lists torch."""
    for key in ("index-url", "extra-index-url"):
        for location in options.get(key, "").split():
            folder = _local_dir(location)
            if folder is not None and (folder / "torch").is_dir():
                return location
    return None


def index_answers(url: str, project: str = "torch") -> bool:
    try:
        return requests.get(f"{url.rstrip('/')}/{project}/", timeout=15).status_code == 200
    except requests.RequestException:
        return False


# ---------------------------------------------------------------------------------------------
# The base image.


def debian_release_for(image: str) -> str:
    """The Debian release to stand in for an official Python image (``python:3.11-slim`` -> bookworm)."""
    tag = image.rpartition(":")[2]
    for codename in DEBIAN_CODENAMES:
        if codename in tag:
            return codename
    version = re.match(r"\d+\.\d+", tag)
    if version and version.group(0) in DEBIAN_FOR_PYTHON:
        return DEBIAN_FOR_PYTHON[version.group(0)]
    raise EngineError(f"no Debian release known to bring the Python of {image}; add it to DEBIAN_FOR_PYTHON")


def make_local_base(engine: Engine, image: str, tag: str, workdir: Path, pip_options: dict[str, str]) -> str:
    """Build a stand-in for ``image`` with mmdebstrap, this machine's pip configuration inside; import it as ``tag``."""
    if not shutil.which("mmdebstrap"):
        raise EngineError(
            f"{image} cannot be pulled and mmdebstrap, which would make it locally, is not installed "
            "(deploy/container/install-engine.sh installs it)"
        )
    release = debian_release_for(image)
    overlay = workdir / "base-overlay"
    files, _ = pip_files_and_folders(pip_options)
    for path in files:
        target = overlay / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    config = "[global]\n" + "".join(f"{key} = {value}\n" for key, value in pip_options.items())
    (overlay / "etc").mkdir(parents=True, exist_ok=True)
    (overlay / "etc" / "pip.conf").write_text(config)
    tarball = workdir / "base.tar"
    command = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        # python is the command the official images have (and the Dockerfile uses); venv brings ensurepip.
        "--include=python3,python3-venv,python-is-python3,ca-certificates",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        # After ca-certificates has written its bundle: this machine's files (its CA bundle) go over it.
        f"--customize-hook=sync-in {overlay} /",
        release,
        str(tarball),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise EngineError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    try:
        engine(
            "import",
            "--change",
            f"LABEL {LABEL}=base",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["python"]',
            str(tarball),
            tag,
            timeout=600,
        )
    finally:
        tarball.unlink(missing_ok=True)
    return tag


@dataclass
class BuildPlan:
    """What ``build`` passes besides the Dockerfile: build arguments, options, and the base it made (to remove)."""

    build_args: dict[str, str] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    made_base: str | None = None
    notes: list[str] = field(default_factory=list)


def plan_build(engine: Engine, workdir: Path, run_id: str) -> BuildPlan:
    """The base image (pulled, or made here) and the package sources a build can reach on this machine."""
    plan = BuildPlan()
    base = dockerfile_default("PYTHON_IMAGE")
    pip_options = host_pip_config()
    if engine.image_exists(base):
        plan.notes.append(f"base {base}: present")
    elif engine("pull", base, timeout=600, check=False).returncode == 0:
        plan.notes.append(f"base {base}: pulled")
    else:
        tag = f"localhost/{NAME_PREFIX}-base:{debian_release_for(base)}-{run_id}"
        started = time.monotonic()
        plan.made_base = make_local_base(engine, base, tag, workdir, pip_options)
        plan.build_args["PYTHON_IMAGE"] = tag
        plan.notes.append(f"base {base}: cannot be pulled; made {tag} in {time.monotonic() - started:.0f} s")
        if engine.name == "podman":
            plan.options.append("--pull=never")
            _, folders = pip_files_and_folders(pip_options)
            plan.options += [f"--volume={folder}:{folder}:ro" for folder in folders]
    torch_index = dockerfile_default("TORCH_INDEX_URL")
    if not index_answers(torch_index):
        local = local_torch_index(pip_options)
        if local is None:
            raise EngineError(f"the torch index {torch_index} does not answer and pip's configuration names no other")
        plan.build_args["TORCH_INDEX_URL"] = local
        plan.notes.append(f"torch index {torch_index} does not answer; using {local}")
    return plan


def needed_free_gib(plan: BuildPlan) -> float | None:
    """The free space ``plan``'s build needs, in GiB: measured for the local (CUDA) torch only, else None."""
    override = os.environ.get("LAYERTAP_CONTAINER_MIN_FREE_GIB")
    if override:
        return float(override)
    return NEEDED_FREE_GIB_CUDA_TORCH if "TORCH_INDEX_URL" in plan.build_args else None


def check_room(engine: Engine, needed_gib: float | None) -> Path | None:
    """Raise NoRoom, naming both figures, when the engine's storage has less than ``needed_gib`` free.

    Returns the storage root, to watch during the build (None where the engine keeps it on another
    machine, a remote docker daemon); with ``needed_gib`` None the root is returned unchecked.
    """
    root = engine.storage_root()
    if root is None or needed_gib is None:
        return root
    free = shutil.disk_usage(root).free
    if free < needed_gib * 2**30:
        raise NoRoom(
            f"needs free disk: the build needs about {needed_gib:g} GiB at {root}, and {free / 2**30:.1f} GiB "
            "is free (`make container-clean` removes what an interrupted run left)"
        )
    return root


@dataclass
class BuildResult:
    seconds: float
    # The most the storage's free space fell during the build: the build's peak, plus whatever else
    # wrote to that disk meanwhile (None: not measured).
    peak_disk_bytes: int | None


def build(
    engine: Engine, plan: BuildPlan, tag: str, build_args: dict[str, str], log_path: Path, storage: Path | None = None
) -> BuildResult:
    """Build the Dockerfile as ``tag`` (output in ``log_path``), watching the free space at ``storage``."""
    command = [*engine.argv, "build", "--file", str(DOCKERFILE), "--tag", tag, "--label", f"{LABEL}=image"]
    if engine.name == "podman":
        # HEALTHCHECK exists only in the docker image format: OCI images drop it.
        command += ["--format=docker", *engine.limits]
    for key, value in {**plan.build_args, **build_args}.items():
        command += ["--build-arg", f"{key}={value}"]
    command += [*plan.options, str(ROOT)]
    started = time.monotonic()
    with log_path.open("w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        free_before = lowest_free = _free_bytes(storage)
        try:
            while (returncode := process.poll()) is None:
                if time.monotonic() - started > BUILD_TIMEOUT_S:
                    raise subprocess.TimeoutExpired(command, BUILD_TIMEOUT_S)
                lowest_free = min(lowest_free, _free_bytes(storage))
                time.sleep(0.5)
        except BaseException as exc:  # a timeout, or the test run interrupted: let the engine clean up its build
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise EngineError(f"the build ran over {BUILD_TIMEOUT_S} s; its log: {log_path}") from exc
            raise
    if returncode != 0:
        raise EngineError(f"the build exited with {returncode}:\n{log_path.read_text()[-6000:]}")
    measured = storage is not None and free_before != _UNKNOWN
    return BuildResult(time.monotonic() - started, free_before - lowest_free if measured else None)


_UNKNOWN = 2**63  # larger than any disk: a failed reading never lowers the minimum


def _free_bytes(storage: Path | None) -> int:
    if storage is None:
        return _UNKNOWN
    try:
        return shutil.disk_usage(storage).free
    except OSError:  # the folder went away or cannot be read: the build goes on, unwatched
        return _UNKNOWN


def clean(engine: Engine) -> list[str]:
    """Remove every container and image this module's label marks (what a killed run left); return what stays."""
    containers = engine("ps", "--all", "--quiet", "--filter", f"label={LABEL}").stdout.split()
    for container in containers:
        engine("rm", "--force", container, check=False)
    return engine.remove_images(sorted(engine.labelled_images()), force=True)


if __name__ == "__main__":
    # python -m tests.container.harness clean: what an interrupted `make container-test` left behind.
    if sys.argv[1:] != ["clean"]:
        sys.exit("usage: python -m tests.container.harness clean")
    found = find_engine()
    if found is None:
        sys.exit("no container engine")
    left = clean(found)
    sys.exit(f"could not remove: {left}" if left else 0)
