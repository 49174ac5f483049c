"""Inside the sandbox: load the sample's code as a module, then answer calls from the trusted judge.

This file is the head of the sandboxed program (inference.sandbox.run_judged appends one line that
calls `serve`). It runs in the untrusted process, so nothing here is relied on: the sample may
rewrite any of it, print anything, write to any descriptor it holds, exit at any moment. The most
it can do is send some plain value as the answer to a call, which is what returning that value
would have done; it never sees a test, an expected value or the verdict (inference.verdict).

Protocol (newline-delimited JSON, values in inference._wire's encoding):
    sample -> judge   {"loaded": true} | {"load_error": "Type: message"}   once, first
    judge -> sample   {"id": N, "fn": NAME, "args": [...], "kwargs": {...}}
    sample -> judge   {"id": N, "ok": VALUE} | {"id": N, "error": ["TypeName", "message"]}
"""

import builtins
import os
import sys
import types


def serve(req_fd: int, resp_fd: int, wire_source: str, source: str) -> None:
    wire = types.ModuleType("_kit_wire")
    exec(compile(wire_source, "_kit_wire.py", "exec", dont_inherit=True), wire.__dict__)
    requests = os.fdopen(req_fd, "rb")
    replies = os.fdopen(resp_fd, "wb")

    def send(msg: dict) -> None:
        replies.write(wire.dumps(msg).encode() + b"\n")
        replies.flush()

    path = os.path.abspath("candidate.py")
    with open(path, "w") as f:  # on the sample's private tmpfs: tracebacks can show its lines
        f.write(source)
    # not "__main__": `if __name__ == "__main__"` blocks stay inert, as in HumanEval's harness
    module = types.ModuleType("candidate")
    module.__file__ = path
    module.__builtins__ = builtins
    sys.modules["candidate"] = module
    try:
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
    except BaseException as e:  # noqa: BLE001 - SystemExit and the like included: the sample did not load
        send({"load_error": f"{type(e).__name__}: {e}"[:2000]})
        raise
    send({"loaded": True})
    while True:
        line = requests.readline()
        if not line:
            return
        msg = wire.loads(line)
        reply: dict = {"id": msg["id"]}
        try:
            fn = getattr(module, msg["fn"])
            result = fn(*wire.decode(msg["args"]), **wire.decode(msg["kwargs"]))
            reply["ok"] = wire.encode(result)
        except wire.WireError as e:
            reply["error"] = ["BoundaryError", str(e)]
        except BaseException as e:  # noqa: BLE001 - whatever the sample raised is its answer
            reply["error"] = [type(e).__name__, str(e)[:2000]]
        send(reply)
