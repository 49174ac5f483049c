"""Generation speed for code evaluation: the kit's HF backend against a vLLM server through the
kit's endpoint client, on the same model, machine and HumanEval samples, in one run; and the
client's overhead against vLLM's own offline rate (its `LLM.generate` on the same prompts, same
engine settings, the server stopped first so that the two do not share the cores).

Every sample is exactly --max-new-tokens tokens (no stop strings, EOS ignored), so each side does
the same work and samples/s compare directly. Model: a random gpt-oss of the real architecture
shrunk to 2 layers (head_dim 64 and the real vocabulary, what vLLM's CPU attention supports), or
--model DIR (an HF gpt-oss directory).

    make vllm && python bench/eval_endpoint.py [--problems 16] [--n 4] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VLLM_PY = ROOT / "build/venv-vllm/bin/python"
ENGINE = ["--enforce-eager", "--dtype", "bfloat16", "--max-model-len", "1024", "--max-num-seqs", "32"]
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}

OFFLINE = r"""
import json, sys, time
from vllm import LLM, SamplingParams, TokensPrompt
if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    llm = LLM(model=spec["model"], enforce_eager=True, dtype="bfloat16", max_model_len=1024, max_num_seqs=32)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    params = [SamplingParams(max_tokens=spec["max_tokens"], temperature=0.8, seed=s, ignore_eos=True)
              for s in spec["seeds"]]
    llm.generate(prompts[:2], params[:2])  # warm-up, as the server has served requests before timing
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    wall = time.perf_counter() - t0
    print("RESULT " + json.dumps({"wall": wall, "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF gpt-oss directory (default: a random 2-layer one, head_dim 64)")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    if not VLLM_PY.is_file():
        raise SystemExit(f"no vLLM venv at {VLLM_PY.parent.parent}: run `make vllm`")
    import torch

    from inference.backends import HFBackend
    from inference.codec import KitCodec
    from inference.endpoint import EndpointBackend
    from inference.problems import load
    from inference.sampling import SamplingParams, generate

    work = Path(tempfile.mkdtemp(prefix="bench-eval-endpoint-"))
    model = args.model
    if model is None:
        from conversion.random_init import make_random_hf
        from gptoss.arch import TINY

        model = str(make_random_hf(work / "gpt-oss-bench", replace(TINY, name="bench", head_dim=64)))
    codec = KitCodec()
    problems = load("humaneval")[: args.problems]
    prompts = [codec.encode(p.prompt) for p in problems for _ in range(args.n)]
    seeds = list(range(len(prompts)))
    # no stops, EOS never a stop: every sample has exactly max_new_tokens tokens on every side
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.8)
    total_tokens = len(prompts) * args.max_new_tokens
    print(f"model {model}; {len(problems)} HumanEval prompts x {args.n} samples x {args.max_new_tokens} tokens; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip

    hf = HFBackend(model, device="cpu", dtype=torch.bfloat16)
    generate(hf, prompts[:2], replace(params, max_new_tokens=2))  # warm-up
    t0 = time.perf_counter()
    for b in range(0, len(prompts), 32):  # the kit's default batch for eval is 8; 32 is kinder to HF here
        generate(hf, prompts[b : b + 32], params, seeds=seeds[b : b + 32])
    hf_wall = time.perf_counter() - t0
    del hf
    n = len(prompts)
    print(f"HF backend (kit loop, KV cache, batch 32): {hf_wall:.2f} s, {n / hf_wall:.2f} samples/s, "
          f"{total_tokens / hf_wall:.0f} tokens/s", flush=True)  # fmt: skip

    port = free_port()
    log = work / "server.log"
    cmd = [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name",
           "bench", "--host", "127.0.0.1", "--port", str(port), *ENGINE]  # fmt: skip
    env = {"PATH": os.environ["PATH"], "HOME": str(work), **VLLM_ENV}
    with log.open("wb") as f:
        server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"vLLM did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(2)
        ep = EndpointBackend(url, "bench", concurrency=32, extra={"ignore_eos": True})
        ep.complete(prompts[:2], replace(params, max_new_tokens=2))  # warm-up
        t0 = time.perf_counter()
        outs = ep.complete(prompts, params, seeds=seeds)
        ep_wall = time.perf_counter() - t0
        ep_tokens = sum(len(g.tokens) for g in outs)
        print(f"endpoint (kit client -> vLLM server, 32 in flight): {ep_wall:.2f} s, {n / ep_wall:.2f} samples/s, "
              f"{ep_tokens / ep_wall:.0f} tokens/s ({ep_tokens} tokens)", flush=True)  # fmt: skip
    finally:
        os.killpg(server.pid, 15)
        server.wait()
    spec = work / "offline.json"
    spec.write_text(json.dumps({"model": model, "prompts": prompts, "seeds": seeds, "max_tokens": args.max_new_tokens}))
    script = work / "offline.py"
    script.write_text(OFFLINE)
    r = subprocess.run([str(VLLM_PY), str(script), str(spec)], env={**env}, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"offline vLLM failed:\n{r.stderr[-2000:]}")
    offline = json.loads(next(x for x in r.stdout.splitlines()[::-1] if x.startswith("RESULT "))[7:])
    print(f"vLLM offline LLM.generate: {offline['wall']:.2f} s, {n / offline['wall']:.2f} samples/s, "
          f"{offline['tokens'] / offline['wall']:.0f} tokens/s ({offline['tokens']} tokens)")  # fmt: skip
    print(f"endpoint / HF: x{hf_wall / ep_wall:.2f} samples/s")
    overhead = ep_wall / offline["wall"] - 1
    print(f"client + server overhead over vLLM's offline rate: {overhead * 100:+.1f}% (budget <= +10%)")


if __name__ == "__main__":
    main()
