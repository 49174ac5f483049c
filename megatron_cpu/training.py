"""Run Megatron-Bridge's real pretrain()/finetune() on a machine without a GPU.

megatron.bridge.training assumes CUDA throughout: initialize.py asserts torch.cuda.is_available(),
Megatron's DDP allocates grad buffers and streams on CUDA, clip_grads asserts
'torch.cuda.FloatTensor', layers pass device=torch.cuda.current_device(), process groups are NCCL.
Rather than fork that code, `cpu_training()` makes it believe in a single CUDA device that is
really the CPU, for the duration of a `with` block:

- torch.cuda's queries answer as for one device; streams/events/synchronize are no-ops; RNG and
  memory queries map to the CPU (memory = this process's RSS).
- every device="cuda"/cuda:N/int argument, Tensor.cuda() and .to("cuda") land on the CPU (a
  TorchFunctionMode), and Tensor.type() names CPU float tensors as CUDA ones for clip_grads' assert.
- NCCL process groups are created as gloo.
- megatron.core.datasets' compile_helpers() (runs `make` in site-packages, whose Makefile the wheel
  omits) becomes a no-op: the compiled helper ships prebuilt.

It is inert when CUDA is really available: the block runs unchanged. Only the tiny CPU recipes use
it (tests and `make demo`), together with the CPU-safe layer spec of `megatron_cpu.model` that their
recipes select. Nothing here changes numerics: the same megatron-bridge training loop,
optimizer, scheduler, checkpointing and data pipeline run, in fp32 on the CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_CUDA_NAMES = ("cuda",)
_FORCE_CPU = "KIT_FORCE_CPU"


def cuda_available() -> bool:
    """The kit's one GPU check: torch's, for a real GPU, not the single pretend device of
    `cpu_training()` (and False inside `forced_cpu`, or with KIT_FORCE_CPU=1). CUDA_VISIBLE_DEVICES
    says nothing: SLURM sets it on any node with GPU GRES, fake or real."""
    if os.environ.get(_FORCE_CPU) == "1":
        return False
    return getattr(torch.cuda, "real_is_available", torch.cuda.is_available)()


@contextlib.contextmanager
def forced_cpu() -> Iterator[None]:
    """Everything in megatron_cpu.model behaves as on a CPU-only host, GPU or not (for work that needs no
    GPU, such as the streamed conversion: one code path, the one the CPU tests exercise)."""
    saved = os.environ.get(_FORCE_CPU)
    os.environ[_FORCE_CPU] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_FORCE_CPU, None)
        else:
            os.environ[_FORCE_CPU] = saved


def eager_without_gpu() -> bool:
    """The kit's TORCHDYNAMO policy, in one place: without a real GPU, every torch.compile'd function
    (Megatron's fusions, which target CUDA) runs eagerly, for the rest of the process. Returns True
    when it switched. A run-time stance rather than TORCHDYNAMO_DISABLE, because it must also hold
    for functions that were decorated before the decision, and inside `cpu_training()`, where dynamo
    would otherwise trace torch.cuda's stand-ins and fail ("Duplicate torch object")."""
    if cuda_available():
        return False
    torch.compiler.set_stance("force_eager")
    return True


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] in _CUDA_NAMES
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu(device: Any) -> Any:
    return torch.device("cpu") if _is_cuda(device) else device


class _CudaToCpu(TorchFunctionMode):
    """Redirect CUDA placements to the CPU for every torch function and Tensor method."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.device:
            return _cpu(func(*args, **kwargs)) if not (args and isinstance(args[0], int)) else torch.device("cpu")
        args = tuple(_cpu(a) if isinstance(a, torch.device) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        name = getattr(func, "__name__", "")
        if name == "to":
            args = tuple(_cpu(a) if i > 0 else a for i, a in enumerate(args))
        elif name == "cuda":
            return args[0]
        elif name == "type" and len(args) == 1 and not kwargs:
            result = func(*args)
            return (
                result.replace("torch.", "torch.cuda.", 1)
                if isinstance(result, str) and ".cuda." not in result
                else result
            )
        elif name in ("pin_memory", "is_pinned"):
            return args[0] if name == "pin_memory" else False
        return func(*args, **kwargs)


class _Stream:
    def __init__(self, *a, **k):
        pass

    def wait_stream(self, *a, **k):
        pass

    def wait_event(self, *a, **k):
        pass

    def record_event(self, *a, **k):
        return _Event()

    def synchronize(self):
        pass

    def query(self):
        return True

    @property
    def cuda_stream(self):
        return 0


class _Event:
    def __init__(self, *a, **k):
        pass

    def record(self, *a, **k):
        pass

    def wait(self, *a, **k):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _props():
    return types.SimpleNamespace(
        name="cpu (cpu_training)",
        total_memory=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        major=8,
        minor=0,
        multi_processor_count=os.cpu_count() or 1,
    )


def _cuda_replacements() -> dict[str, Any]:
    none = lambda *a, **k: None  # noqa: E731
    return {
        "is_available": lambda: True,
        "is_initialized": lambda: True,
        "device_count": lambda: 1,
        "current_device": lambda: 0,
        "set_device": none,
        "synchronize": none,
        "empty_cache": none,
        "Stream": _Stream,
        "Event": _Event,
        "stream": lambda *a, **k: contextlib.nullcontext(),
        "current_stream": lambda *a, **k: _Stream(),
        "default_stream": lambda *a, **k: _Stream(),
        "set_stream": none,
        "get_device_properties": lambda *a, **k: _props(),
        "get_device_capability": lambda *a, **k: (8, 0),
        "get_device_name": lambda *a, **k: "cpu",
        "memory_allocated": lambda *a, **k: _rss(),
        "max_memory_allocated": lambda *a, **k: _rss(),
        "memory_reserved": lambda *a, **k: _rss(),
        "max_memory_reserved": lambda *a, **k: _rss(),
        "reset_peak_memory_stats": none,
        "reset_max_memory_allocated": none,
        "memory_stats": lambda *a, **k: {},
        "mem_get_info": lambda *a, **k: (_props().total_memory - _rss(), _props().total_memory),
        # the "device" generator is the CPU's (torch.manual_seed itself calls cuda.manual_seed_all)
        "manual_seed": lambda seed: torch.default_generator.manual_seed(int(seed)),
        "manual_seed_all": lambda seed: torch.default_generator.manual_seed(int(seed)),
        "get_rng_state": lambda *a, **k: torch.get_rng_state(),
        "set_rng_state": lambda state, *a, **k: torch.set_rng_state(state),
        "get_rng_state_all": lambda: [torch.get_rng_state()],
        "set_rng_state_all": lambda states: torch.set_rng_state(states[0]),
        "ipc_collect": none,
        "default_generators": (torch.default_generator,),
    }


def _gloo(fn):
    def wrapper(*args, **kwargs):
        if kwargs.get("backend") in ("nccl", "cpu:gloo,cuda:nccl") or (
            args and fn.__name__ == "init_process_group" and args[0] == "nccl"
        ):
            kwargs["backend"] = "gloo"
            if args and fn.__name__ == "init_process_group":
                args = args[1:]
        kwargs.pop("pg_options", None)
        kwargs.pop("device_id", None)
        return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    return wrapper


@contextlib.contextmanager
def cpu_training() -> Iterator[bool]:
    """Within the block, Megatron's CUDA-only training code runs on the CPU. Yields True when the
    shims are active (no real GPU), False when CUDA is available and nothing was changed."""
    if torch.cuda.is_available():  # a real GPU, or this block already active
        yield False
        return
    eager_without_gpu()
    # dynamo builds a table of torch functions on first import: let it see the real ones
    importlib.import_module("torch._dynamo")
    import torch.distributed as dist

    saved: list[tuple[Any, str, Any]] = []

    missing = object()

    def patch(obj: Any, name: str, value: Any) -> None:
        saved.append((obj, name, getattr(obj, name, missing)))
        setattr(obj, name, value)

    patch(torch.cuda, "real_is_available", torch.cuda.is_available)  # read by megatron_cpu.model.cuda_available
    for name, value in _cuda_replacements().items():
        patch(torch.cuda, name, value)
        if hasattr(torch.cuda.random, name):
            patch(torch.cuda.random, name, value)
    patch(torch.Tensor, "cuda", lambda self, *a, **k: self)
    patch(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    for name in ("init_process_group", "new_group", "new_subgroups_by_enumeration"):
        patch(dist, name, _gloo(getattr(dist, name)))
    import megatron.core.datasets.utils as dataset_utils

    patch(dataset_utils, "compile_helpers", lambda: None)
    try:
        import megatron.bridge.training.initialize as bridge_init

        patch(bridge_init, "compile_helpers", lambda: None)
    except ImportError:
        pass
    mode = _CudaToCpu()
    mode.__enter__()
    try:
        yield True
    finally:
        mode.__exit__(None, None, None)
        for obj, name, value in reversed(saved):
            if value is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, value)
