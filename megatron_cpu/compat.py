"""Import megatron.bridge on a machine without Transformer Engine (CPU dev boxes and CI).

What it works around (megatron-core 0.19.2, megatron-bridge 0.6.2, Python 3.11):

1. Both packages declare Python >= 3.12 and use `typing.override`, which 3.11 lacks; we alias it to
   `typing_extensions.override` (the same decorator, a no-op at run time).
2. `megatron.bridge.peft.lora_layers` does `import transformer_engine.pytorch as te` at module
   level, and `megatron.bridge.training.pretrain` imports `nvidia_resiliency_ext.inprocess`, both
   unconditionally. Neither package can be installed here (TE's torch part is source-only and needs
   CUDA; resiliency-ext 0.4.1 breaks megatron.core). We put placeholder modules in `sys.modules`
   only while those two bridge modules import, then remove them, so no other code can mistake a
   placeholder for the real thing. Placeholder attributes are fresh classes, so the bridge's
   `isinstance(x, te.Linear)` checks are simply False.
3. `megatron.bridge.peft.{utils,module_matcher}` compute HAVE_TE from megatron.core's TE extension,
   which imports without TE; we set those flags to False, otherwise LoRA fails with
   "isinstance() arg 2 must be a type".

4. On a GPU without Transformer Engine (a bare GPU host: its own PyTorch, no TE), a recipe's model
   still asks for TE layers (`transformer_impl="transformer_engine"`, TE's layer spec) and would fail
   at model build. `GPTModelProvider.finalize` is wrapped so that, when CUDA is there and TE is not,
   it first switches the provider to megatron-core's local layers (`megatron_cpu.model.without_te`,
   which says so once). On a CPU the wrapper does nothing (`make_cpu_friendly` has set local layers).

When Transformer Engine imports (GPU images), steps 2 to 4 are skipped entirely; step 1 only ever
adds a missing name. The kit's entry points (each `python -m ...` main, the recipe builders) call
`from megatron_cpu.compat import import_bridge; import_bridge()` before touching megatron.bridge; no module
of the kit does it at import.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
import typing

_DONE = False


def te_available() -> bool:
    """True when the real Transformer Engine imports (its import can raise RuntimeError, not only ImportError)."""
    if "transformer_engine" in sys.modules and getattr(sys.modules["transformer_engine"], "__kit_placeholder__", False):
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - TE raises RuntimeError("cudnn shared object not found") without CUDA
        return False
    return True


class _PlaceholderModule(types.ModuleType):
    """A module whose every attribute is a fresh, unused class (or a nested placeholder module)."""

    __kit_placeholder__ = True

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value: object
        if name.islower():  # submodules such as te.ops
            value = _PlaceholderModule(f"{self.__name__}.{name}")
        else:
            value = type(name, (), {"__module__": self.__name__})
        setattr(self, name, value)
        return value


def _patch_typing_override() -> None:
    if not hasattr(typing, "override"):
        import typing_extensions

        typing.override = typing_extensions.override  # type: ignore[attr-defined]


def import_bridge() -> None:
    """Make `import megatron.bridge` (and its training and peft modules) work here. Idempotent."""
    global _DONE
    if _DONE:
        return
    _patch_typing_override()
    # The bridge logs a traceback at INFO for every optional TE symbol it cannot find; on a
    # machine without TE that is pure noise.
    logging.getLogger("megatron.bridge.utils.import_utils").addFilter(lambda r: r.levelno >= logging.WARNING)
    if te_available():
        _DONE = True
        return

    # megatron.core probes for TE at import time in many modules: import it *before* any
    # placeholder exists so its answers are right.
    import megatron.core  # noqa: F401
    import megatron.core.extensions.transformer_engine  # noqa: F401
    import megatron.core.models.gpt.gpt_layer_specs  # noqa: F401
    import megatron.training  # noqa: F401  (pulls in the hybrid specs, which query the TE version)

    placeholder_names = [
        "transformer_engine",
        "transformer_engine.pytorch",
        "nvidia_resiliency_ext",
        "nvidia_resiliency_ext.inprocess",
    ]
    before = set(sys.modules)
    added = []
    for name in placeholder_names:
        if name not in sys.modules:
            sys.modules[name] = _PlaceholderModule(name)
            added.append(name)
    sys.modules["transformer_engine"].pytorch = sys.modules["transformer_engine.pytorch"]  # type: ignore[attr-defined]
    sys.modules["nvidia_resiliency_ext"].inprocess = sys.modules["nvidia_resiliency_ext.inprocess"]  # type: ignore[attr-defined]
    try:
        importlib.import_module("megatron.bridge")
        importlib.import_module("megatron.bridge.peft.lora_layers")
        importlib.import_module("megatron.bridge.training.pretrain")
    finally:
        for name in added:
            sys.modules.pop(name, None)

    # Modules first imported while the placeholders existed may have concluded "TE is here"
    # (`try: import transformer_engine; HAVE_TE = True`): correct every such flag.
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        if module is None or not name.startswith("megatron"):
            continue
        for attr, value in list(vars(module).items()):
            if attr.startswith("HAVE_TE") and value is True:
                setattr(module, attr, False)
    import megatron.bridge.peft.module_matcher as module_matcher
    import megatron.bridge.peft.utils as peft_utils

    for mod in (peft_utils, module_matcher):
        mod.HAVE_TE = False
    _local_layers_where_te_is_missing()
    _DONE = True


def _local_layers_where_te_is_missing() -> None:
    """Step 4: wrap GPTModelProvider.finalize (once) so a GPU without TE builds local layers."""
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    original = GPTModelProvider.finalize
    if getattr(original, "__kit_without_te__", False):
        return

    def finalize(self, *args, **kwargs):
        from megatron_cpu.model import without_te

        without_te(self)  # inert on a CPU and for local layers
        return original(self, *args, **kwargs)

    finalize.__kit_without_te__ = True  # type: ignore[attr-defined]
    finalize.__doc__ = original.__doc__
    GPTModelProvider.finalize = finalize  # type: ignore[method-assign]
