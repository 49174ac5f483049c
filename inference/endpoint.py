"""An OpenAI-compatible completions server (vLLM, or any other) as a generation backend.

`generate --endpoint URL --model NAME` and `eval code --endpoint URL --model NAME` send each
prompt to `POST URL/v1/completions` with many requests in flight at once (`--concurrency`), so
the server batches them (continuous batching is where vLLM's speed comes from).

Prompts:
- gpt-oss: the prompt goes as token ids, the kit's own rendering (raw: the kit's tokenizer; chat:
  the harmony rendering of data_prep.sft), so the server sees byte for byte what the kit's own
  backends see; the server returns the generated ids (`return_token_ids`, vLLM), which harmony
  parsing needs. Stop token ids go as vLLM's `stop_token_ids`.
- any other model: the prompt goes as text (the server tokenizes it with the model's tokenizer);
  raw completion only.
Either way HumanEval's stop strings go as `stop`, and the kit applies the same post-processing
(truncation at the stop sequences, code extraction) to what comes back as to its own backends.

Sampling: temperature / top_p / top_k (vLLM's extension) / max_tokens, and a seed per sample
(vLLM honours a per-request `seed`: the same command gives the same samples; the samples are
not the kit's own backends' samples, whose random streams differ, but greedy tokens are the same
up to numerics: a test compares them with a real vLLM).

Errors (CheckpointError, so the CLI prints one line and exits 2): a server that does not answer,
a model it does not serve, a request it refuses.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inference.backends import CheckpointError
from inference.codec import Codec, KitCodec
from inference.sampling import Generation, SamplingParams

PROMPT_FORMATS = ("auto", "ids", "text")


class TextOnlyCodec:
    """A model whose tokenizer the kit does not hold: the server tokenizes; text in, text out."""

    harmony = False

    def __init__(self, model: str) -> None:
        self.name = f"the server's tokenizer for {model}"

    def encode(self, text: str) -> list[int]:
        raise ValueError("text prompts are sent as text")

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b""

    def raw_stop_ids(self) -> tuple[int, ...]:
        return ()


class EndpointBackend:
    """Generation through an OpenAI-compatible server; `complete` replaces the kit's decoding loop."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        prompt_format: str = "auto",
        concurrency: int = 32,
        timeout_s: float = 600.0,
        extra: dict | None = None,
    ) -> None:
        """`extra`: more fields for every /v1/completions request (e.g. vLLM's {"ignore_eos": true})."""
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
        if concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
        self.url = url.rstrip("/").removesuffix("/v1")
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.extra = dict(extra or {})
        card = self._model_card()
        self.max_model_len = card.get("max_model_len")  # vLLM's card says; what `inference score` windows by
        if prompt_format == "auto":
            prompt_format = "ids" if _is_gpt_oss(model, card) else "text"
        self.prompt_format = prompt_format
        self.codec: Codec = KitCodec() if prompt_format == "ids" else TextOnlyCodec(model)
        self.model_type = "gpt_oss" if prompt_format == "ids" else None
        self.name = f"endpoint:{self.url} model {model} ({'token ids' if prompt_format == 'ids' else 'text'} prompts)"

    # ---- HTTP ------------------------------------------------------------------------------------

    def _request(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        if os.environ.get("OPENAI_API_KEY"):  # servers started with --api-key
            req.add_header("Authorization", f"Bearer {os.environ['OPENAI_API_KEY']}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", {}).get("message", detail) if detail else ""
            except (json.JSONDecodeError, AttributeError):
                pass
            detail = " ".join(str(detail).split())  # one line
            raise CheckpointError(f"{self.url}{path}: HTTP {e.code}: {detail[:300]}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CheckpointError(
                f"endpoint {self.url} does not answer ({reason}): start the server first (e.g. `python -m "
                "vllm.entrypoints.openai.api_server --model DIR --host 127.0.0.1 --port 8000`) or fix --endpoint"
            ) from None
        except json.JSONDecodeError:
            raise CheckpointError(f"{self.url}{path}: the answer is not JSON: not an OpenAI-compatible server?") from None

    def _model_card(self) -> dict:
        served = self._request("/v1/models").get("data") or []
        for card in served:
            if card.get("id") == self.model:
                return card
        names = ", ".join(str(c.get("id")) for c in served) or "none"
        raise CheckpointError(f"endpoint {self.url} does not serve model {self.model!r} (it serves: {names}): fix --model")

    # ---- generation ----------------------------------------------------------------------------------

    def next_token_logits(self, sequences: list[list[int]]):
        raise NotImplementedError("an endpoint generates whole completions (complete), not one token at a time")

    def prompt_logprobs(self, seqs: list[list[int]]) -> list:
        """log p(ids[i] | ids[:i]) for i >= 1 of each id sequence (`inference score`), from vLLM's
        `prompt_logprobs` extension of /v1/completions (one generated token, discarded)."""
        import numpy as np

        def one(ids: list[int]):
            body = {"model": self.model, "prompt": list(ids), "max_tokens": 1, "temperature": 0.0,
                    "prompt_logprobs": 0, **self.extra}  # fmt: skip
            choice = self._request("/v1/completions", body)["choices"][0]
            entries = choice.get("prompt_logprobs")
            if not entries or len(entries) != len(ids):
                raise CheckpointError(
                    f"endpoint {self.url} returned no prompt log-probabilities for {len(ids)} prompt tokens: scoring "
                    "needs a server with vLLM's `prompt_logprobs` (python -m vllm.entrypoints.openai.api_server ...)"
                )
            # each entry maps token ids (as strings) to {"logprob": ...}; the prompt's own token is always there
            return np.array([e[str(t)]["logprob"] for t, e in zip(ids[1:], entries[1:])], dtype=np.float64)

        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(seqs)))) as pool:
            return list(pool.map(one, seqs))

    def _one(self, prompt: list[int] | str, params: SamplingParams, seed: int) -> Generation:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": seed,
            "n": 1,
            **self.extra,
        }
        if params.top_k:
            body["top_k"] = params.top_k
        if params.stop_strings:
            # OpenAI's API takes at most 4 stop strings (vLLM enforces it); the rest are cut here
            body["stop"] = sorted(params.stop_strings)[:4]
        if params.stop_token_ids:
            body["stop_token_ids"] = list(params.stop_token_ids)
        if self.prompt_format == "ids":
            body["return_token_ids"] = True  # vLLM: the generated ids, which harmony parsing needs
            body["skip_special_tokens"] = False
        choice = self._request("/v1/completions", body)["choices"][0]
        tokens = [int(t) for t in choice.get("token_ids") or []]
        text = choice.get("text") or ""
        if self.prompt_format == "ids" and tokens:
            text = self.codec.decode_bytes([t for t in tokens if t not in params.stop_token_ids]).decode(
                "utf-8", errors="replace"
            )
        hit = min((i for i in (text.find(s) for s in params.stop_strings) if i != -1), default=-1)
        if hit != -1:
            text = text[:hit]
        seen = choice.get("prompt_token_ids")
        if isinstance(prompt, list) and seen is not None and list(seen) != list(prompt):
            raise CheckpointError(
                f"endpoint {self.url} changed the prompt's token ids ({len(prompt)} sent, {len(seen)} used): a server "
                "that re-tokenizes id prompts cannot reproduce the kit's rendering"
            )
        reason = choice.get("finish_reason")
        if hit != -1:
            finish = "stop_string"
        elif reason == "length":
            finish = "length"
        elif tokens and tokens[-1] in params.stop_token_ids:
            finish = "stop_token"
        else:
            finish = "stop_string" if reason == "stop" else "length"
        return Generation(prompt=list(prompt) if isinstance(prompt, list) else [], tokens=tokens, text=text,
                          finish_reason=finish, prompt_ids_seen=seen)  # fmt: skip

    def complete(
        self,
        prompts: Sequence[list[int] | str],
        params: SamplingParams,
        *,
        seeds: Sequence[int] | None = None,
        on_text: Callable[[int, str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        """One completion per prompt, `concurrency` requests in flight."""
        seeds = list(seeds) if seeds is not None else [params.seed * 1_000_003 + i for i in range(len(prompts))]
        out: list[Generation | None] = [None] * len(prompts)
        done = 0
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(prompts)))) as pool:
            futures = {pool.submit(self._one, p, params, s): i for i, (p, s) in enumerate(zip(prompts, seeds))}
            for fut in _as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                done += 1
                if on_text and out[i].text:
                    on_text(i, out[i].text)
                if progress:
                    progress(done, len(prompts))
        return [g for g in out if g is not None]


def _as_completed(futures):
    from concurrent.futures import as_completed

    return as_completed(futures)


def _is_gpt_oss(model: str, card: dict) -> bool:
    """The served model is gpt-oss: its directory (vLLM's `root`) says so, or its name does."""
    root = Path(str(card.get("root") or ""))
    cfg = root / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("model_type") == "gpt_oss"
        except (json.JSONDecodeError, OSError):
            pass
    return any(s in f"{model} {card.get('root', '')}".lower() for s in ("gpt-oss", "gpt_oss", "gptoss"))
