#!/usr/bin/env bash
# What `make container-test` needs, installed only where missing (Debian or Ubuntu; apt-get, as root or through sudo):
#   podman, with runc: podman's default runtime, crun, fails on hosts with a mixed cgroup v1/v2 layout, so
#     tests/container passes `--runtime runc` where runc is installed;
#   mmdebstrap: makes the base image locally where no registry serves python:3.11-slim.
# Nothing is installed when a docker daemon answers. Quiet, and a no-op once everything is there.
set -euo pipefail

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  exit 0
fi
wanted=(podman runc mmdebstrap)
if [ "$(id -u)" -ne 0 ]; then
  wanted+=(uidmap slirp4netns)  # rootless podman and mmdebstrap's unshare mode
fi
missing=()
for package in "${wanted[@]}"; do
  dpkg-query --show --showformat='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$' \
    || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-engine.sh: no apt-get here; install ${missing[*]} (or docker) by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-engine.sh: installed ${missing[*]}"
