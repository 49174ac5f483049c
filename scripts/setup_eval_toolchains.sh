#!/usr/bin/env bash
# The toolchains of the MultiPL-E languages the evaluation runs (`make eval-toolchains`; `make test`
# runs it too): Debian's compilers and interpreters and npm's TypeScript. The package names live in
# inference/multiple.py (LANGUAGES); this installs the missing ones, only as root, idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
read -r _ apt_pkgs < <("$PY" -m inference.multiple --missing-packages | grep '^apt')
read -r _ npm_pkgs < <("$PY" -m inference.multiple --missing-packages | grep '^npm')
[ -z "${apt_pkgs:-}${npm_pkgs:-}" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "note: missing toolchains (${apt_pkgs:-} ${npm_pkgs:-}): run as root, or install them; their languages' tests skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if [ -n "${apt_pkgs:-}" ]; then
  echo "installing the evaluation's toolchains: $apt_pkgs"
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  apt-get install -y -qq --no-install-recommends $apt_pkgs >/dev/null
fi
if [ -n "${npm_pkgs:-}" ]; then
  echo "installing from npm: $npm_pkgs"
  # shellcheck disable=SC2086
  npm install -g --silent $npm_pkgs >/dev/null
fi
