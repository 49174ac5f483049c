"""The trusted side of a code-evaluation sample: run the problem's tests, decide the verdict.

Started by inference.sandbox.run_judged as `python -I -S _judge.py` next to the sandboxed sample,
with two pipe ends to it (calls out, answers in) and the problem on stdin. It never runs the
sample's code: the sample's function is a `Remote` proxy that sends the arguments across and gets
a plain value back (inference._wire), so no object of the sample's (an `__eq__` that always says
True, a patched helper, a frame to walk) ever exists here. The verdict goes to this process's own
stdout, a pipe only the harness holds; the sample has no descriptor of it and no way to reach this
process (its own PID, mount and network namespaces).

Namespace of the tests: the problem's prompt is executed here first (it is trusted text: helpers
such as HumanEval/32's `poly` come from it, not from the sample, which could redefine them), its
stub of the entry point is replaced by the proxy, names the tests use that nothing here defines are
standard-library modules (imported) or the sample's globals (proxies, MBPP's `assert f(...)`).

Spec on stdin (JSON): prompt, test, entry_point, free_names, req_fd, resp_fd, memory_bytes, cpu_s,
site_packages. Verdict on stdout, one JSON line: {"status": "passed"|"failed"|"unsupported", "reason": str,
"parts": {name: status}} (parts: what the tests put in `kit_parts`, EvalPlus's base and plus).
"unsupported": the tests need something that cannot cross the boundary (an argument that is not a
plain value); recorded as such, never counted as a pass.
"""

import builtins
import os
import resource
import sys
import types

# Standard library only, and only modules that load fast: `python -I -S` starts this once per
# sample (ast, json and traceback would double its start-up; the harness computes the tests'
# free names, and _wire reads JSON through the C scanner).

MAX_MESSAGE = 64 << 20  # bytes of one answer; more is refused (a sample could flood the pipe)


class Unsupported(BaseException):
    """The tests need something the boundary cannot carry. (BaseException: a test's own
    `except Exception` must not turn it into a pass.)"""


class SampleGone(BaseException):
    """The sample's process closed its end (it exited, crashed or was killed). BaseException for
    the same reason: a sample that exits early must fail even under a test's `except Exception`."""


class Channel:
    def __init__(self, wire: types.ModuleType, req_fd: int, resp_fd: int) -> None:
        self.wire = wire
        self.out = os.fdopen(req_fd, "wb")
        self.inp = os.fdopen(resp_fd, "rb")
        self.next_id = 0

    def receive(self) -> dict:
        line = self.inp.readline(MAX_MESSAGE + 1)
        if not line:
            raise SampleGone("the sample's process ended before answering")
        if len(line) > MAX_MESSAGE or not line.endswith(b"\n"):
            raise self.wire.WireError(f"an answer longer than {MAX_MESSAGE} bytes")
        msg = self.wire.loads(line)
        if type(msg) is not dict:
            raise self.wire.WireError("an answer that is not a JSON object")
        return msg

    def call(self, name: str, args: tuple, kwargs: dict) -> object:
        try:
            payload = {"args": self.wire.encode(list(args)), "kwargs": self.wire.encode(kwargs)}
        except self.wire.WireError as e:
            raise Unsupported(f"calling {name}: {e}") from None
        self.next_id += 1
        try:
            self.out.write(self.wire.dumps({"id": self.next_id, "fn": name, **payload}).encode() + b"\n")
            self.out.flush()
        except BrokenPipeError:
            raise SampleGone("the sample's process ended before the call") from None
        msg = self.receive()
        if msg.get("id") != self.next_id:
            raise self.wire.WireError(f"an answer to call {msg.get('id')!r}, expected {self.next_id}")
        if "ok" in msg:
            return self.wire.decode(msg["ok"])
        err = msg.get("error")
        if type(err) is not list or len(err) != 2 or not all(type(x) is str for x in err):
            raise self.wire.WireError("malformed answer (neither ok nor error)")
        if err[0] == "BoundaryError":  # the sample's return value was not a plain value
            raise self.wire.WireError(f"{name} returned {err[1]}")
        kind = getattr(builtins, err[0], None)
        exc: BaseException = RuntimeError(f"{err[0]}: {err[1]}")
        if isinstance(kind, type) and issubclass(kind, Exception):
            try:
                exc = kind(err[1])  # the same builtin type: tests that expect an exception still work
            except Exception:  # noqa: BLE001 - a type whose constructor wants more arguments
                pass
        exc.kit_raised_by_sample = True
        raise exc


class Remote:
    """The sample's function `name`, called across the boundary."""

    def __init__(self, channel: Channel, name: str) -> None:
        self._channel, self.__name__ = channel, name

    def __call__(self, *args, **kwargs):
        return self._channel.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<sample function {self.__name__}>"


def _compile(source: str, filename: str):
    return compile(source, filename, "exec", dont_inherit=True)


def _trusted_prompt(ns: dict, prompt: str) -> None:
    """Run the prompt's definitions here; a prompt that ends mid-function gets a body to parse."""
    for src in (prompt, prompt.rstrip() + "\n    pass\n"):
        try:
            code = _compile(src, "<prompt>")
        except SyntaxError:
            continue
        exec(code, ns)
        return


def _failure_line(exc: BaseException, test: str) -> str:
    """`Type: message` plus the line of the tests that failed, for the report."""
    where, tb = "", exc.__traceback__
    lines = test.splitlines()
    while tb is not None and not getattr(exc, "kit_self_explained", False):
        if tb.tb_frame.f_code.co_filename == "<test>" and 0 < tb.tb_lineno <= len(lines):
            where = f" at test line {tb.tb_lineno}: {lines[tb.tb_lineno - 1].strip()}"
        tb = tb.tb_next
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if getattr(exc, "kit_raised_by_sample", False):
        text = "the sample raised " + text
    return (text[:400] + where)[:800]


def judge(spec: dict, channel: Channel, ns: dict) -> dict:
    _trusted_prompt(ns, spec["prompt"])
    test = _compile(spec["test"], "<test>")
    entry = spec["entry_point"]
    for name in spec["free_names"]:  # read by the tests, bound by nothing (computed by the harness)
        if name in ns or hasattr(builtins, name):
            continue
        if name in sys.stdlib_module_names:
            ns[name] = __import__(name)
        else:
            ns[name] = Remote(channel, name)
    if entry:
        ns[entry] = Remote(channel, entry)
    hello = channel.receive()
    if hello.get("loaded") is not True:
        return {"status": "failed", "reason": f"the sample did not load: {str(hello.get('load_error'))[:600]}"}
    exec(test, ns)
    if entry:
        check = ns.get("check")
        if not callable(check):
            return {"status": "unsupported", "reason": "the tests define no check(candidate) function"}
        check(ns[entry])
    return {"status": "passed", "reason": ""}


def main() -> None:
    wire = types.ModuleType("_kit_wire")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_wire.py")
    with open(path) as f:
        exec(_compile(f.read(), path), wire.__dict__)
    spec = wire.loads(sys.stdin.buffer.read())
    mem, cpu = spec["memory_bytes"], spec["cpu_s"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    sys.path.extend(spec["site_packages"])  # tests may import installed packages (no .pth files run)
    verdict = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the tests print goes to stderr: stdout carries the verdict only
    channel = Channel(wire, spec["req_fd"], spec["resp_fd"])
    # kit_decode: data the harness attached to the tests (wire-encoded JSON: tuples and sets survive);
    # kit_parts: verdicts of parts of the tests (EvalPlus's base and plus), returned with the verdict
    parts: dict = {}
    ns = {"__name__": "__judge__", "__builtins__": builtins, "kit_parts": parts,
          "kit_decode": lambda text: wire.decode(wire.loads(text))}  # fmt: skip
    try:
        result = judge(spec, channel, ns)
    except Unsupported as e:
        result = {"status": "unsupported", "reason": str(e)}
    except SampleGone as e:
        result = {"status": "failed", "reason": str(e)}
    except BaseException as e:  # noqa: BLE001 - an assertion, the sample's exception, a malformed answer: failed
        result = {"status": "failed", "reason": _failure_line(e, spec["test"])}
    result["parts"] = {str(k): str(v) for k, v in parts.items()}
    verdict.write(wire.dumps(result) + "\n")
    verdict.flush()


if __name__ == "__main__":
    main()
