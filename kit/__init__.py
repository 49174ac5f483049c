"""Kit plumbing shared by every package, importing nothing heavy at import (no torch, no Megatron).

- workspace.py   the $WORKSPACE layout (WORKSPACE.md is its documentation)
- fs.py          atomic file writes and staged output directories (never half-written, never someone else's)
- dist.py        rank-0 helpers for code that runs alone or under torchrun/srun
- secrets.py     redaction of keys and tokens in anything printed or saved
- rendezvous.py  `python -m kit.rendezvous`: the allocation's process-group smoke test (slurm/check_rendezvous.sh)
- versions.py    the versions the kit is developed against, and the job-start check of a node's
"""
