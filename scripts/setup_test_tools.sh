#!/usr/bin/env bash
# The system tools the test suite uses besides .venv (run by `make test`, idempotent): a real
# one-machine SLURM cluster (Debian's slurmctld, slurmd, slurm-client, munge; see
# tests/slurm_cluster.py) and shellcheck for the sbatch scripts. Installs only what is missing, and
# only as root; otherwise it says what the tests that need them will skip.
set -euo pipefail
missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge shellcheck:shellcheck; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: ${missing[*]} not installed (needs root and apt-get): the SLURM and shellcheck tests will skip" >&2
  exit 0
fi
echo "installing the test cluster's packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
