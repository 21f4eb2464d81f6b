#!/usr/bin/env bash
# System packages the tests need, run as root by CI before `make test`:
#   slurmctld slurmd slurm-client -> tests/test_slurm.py starts a real single-node SLURM (tests/slurm_cluster.py)
#   ffmpeg                        -> video rendering tests
# Idempotent: packages already installed are skipped; with nothing missing it does not touch apt at all.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client ffmpeg)
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: must run as root (apt-get install)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system-deps: all present (${PACKAGES[*]})"
    exit 0
fi

echo "install-system-deps: installing ${missing[*]}"
# Quiet unless something fails: then apt's whole output is shown.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
run() {
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "install-system-deps: failed: $*" >&2
        exit 1
    fi
}
run apt-get update -q
# Debian's slurm packages try to start their systemd services; in a container without systemd
# invoke-rc.d just reports that and the install still succeeds. Tests start the daemons themselves.
run apt-get install -y -q --no-install-recommends "${missing[@]}"
for pkg in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || {
        echo "install-system-deps: $pkg did not install" >&2
        exit 1
    }
done
echo "install-system-deps: done"
