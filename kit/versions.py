"""The versions the kit is developed against (the one place: scripts/setup.sh reads them from here),
and the check every SLURM task 0 runs at job start (`python -m kit.versions --check`, see
slurm/lib.sh): it prints what the node's container or venv really has into the job log, and stops the
job in seconds when megatron.bridge is older than the kit's, rather than hours later in a traceback.

`python kit/versions.py --shell` prints the pins as shell assignments (no package needed).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys

DEVELOPED_AGAINST = {"torch": "2.13.0", "megatron-core": "0.19.2", "megatron-bridge": "0.6.2"}
# Distribution names, then import names whose __version__ serves where a source install has no
# metadata (NeMo containers install some packages from source).
PACKAGES = {
    "megatron.bridge": ("megatron-bridge",),
    "megatron.core": ("megatron-core", "megatron_core"),
    "transformer_engine": ("transformer-engine", "transformer_engine", "transformer-engine-cu12", "transformer-engine-cu13"),
    "torch": ("torch",),
}
EXIT_OLD = 2


def _release(version: str) -> tuple[int, ...]:
    """(0, 6, 2) of '0.6.2', '0.6.2rc1', '0.7.0+abc', '0.6.2.dev0' (pre-releases count as released)."""
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def installed() -> dict[str, str | None]:
    """Version of each package in PACKAGES, None where it is absent."""
    out: dict[str, str | None] = {}
    for module, dists in PACKAGES.items():
        version = None
        for dist in dists:
            try:
                version = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        out[module] = version
    return out


def cuda_versions() -> dict[str, str | None]:
    """CUDA and cuDNN as torch was built with them (None for a CPU build or without torch)."""
    try:
        import torch
    except ImportError:
        return {"CUDA": None, "cuDNN": None}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"CUDA": torch.version.cuda, "cuDNN": None if cudnn is None else str(cudnn)}


def problems(versions: dict[str, str | None]) -> list[str]:
    """What stops a job: megatron.bridge missing or older than DEVELOPED_AGAINST's."""
    want = DEVELOPED_AGAINST["megatron-bridge"]
    have = versions.get("megatron.bridge")
    where = "this node's container or venv"
    if have is None:
        return [f"megatron.bridge is not installed in {where}: use the image in slurm/defaults.env or `bash scripts/setup.sh`"]
    if _release(have) < _release(want):
        return [
            f"megatron.bridge {have} in {where} is older than {want}, the version the kit is developed against: "
            f"use a newer image (CONTAINER_IMAGE, default in slurm/defaults.env) or rebuild the venv with `bash scripts/setup.sh`"
        ]
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kit.versions", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="print the versions and exit 2 if megatron.bridge is too old")
    ap.add_argument("--shell", action="store_true", help="print DEVELOPED_AGAINST as shell assignments")
    args = ap.parse_args(argv)
    if args.shell:
        for dist, version in DEVELOPED_AGAINST.items():
            print(f"{dist.upper().replace('-', '_')}_VERSION={version}")
        return 0
    versions = installed()
    shown = {**versions, **cuda_versions()}
    print("versions: " + ", ".join(f"{k} {v or '(none)'}" for k, v in shown.items()), flush=True)
    errors = problems(versions) if args.check else []
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return EXIT_OLD if errors else 0


if __name__ == "__main__":
    sys.exit(main())
