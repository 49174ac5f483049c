"""megatron_cpu.compat: megatron.bridge imports here without Transformer Engine, and leaves no trace."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow  # 20-31 s on 2 cores (bench/test_times.md): `make test` runs it, test-quick does not
def test_bridge_imports_without_te_and_leaves_no_placeholder():
    code = (
        "import sys, typing\n"
        "from megatron_cpu.compat import import_bridge, te_available\n"
        "import_bridge()\n"
        "import megatron.bridge.training.pretrain, megatron.bridge.peft.lora_layers as ll\n"
        "import megatron.bridge.peft.utils as pu, megatron.bridge.peft.module_matcher as mm\n"
        "assert 'transformer_engine' not in sys.modules and 'nvidia_resiliency_ext' not in sys.modules\n"
        "assert not te_available() and pu.HAVE_TE is False and mm.HAVE_TE is False\n"
        "assert hasattr(typing, 'override')\n"
        "bad = [n for n, m in list(sys.modules.items()) if n.startswith('megatron') and m is not None\n"
        "       and any(k.startswith('HAVE_TE') and v is True for k, v in vars(m).items())]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
