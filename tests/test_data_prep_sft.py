"""data_prep sft: harmony rendering equals openai_harmony's, loss only on assistant output, packing
into the parquet that Megatron-Bridge's GPTSFTPackedParquetDataset reads."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from data_prep import sft
from gptoss.tokenizer import SPECIAL, encoding
from megatron_cpu.compat import import_bridge

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [
        {"role": "system", "content": "You are a careful coder."},
        {"role": "developer", "content": "Answer in Python."},
        {"role": "user", "content": "Reverse a list."},
        {"role": "assistant", "content": "Use `xs[::-1]`.", "thinking": "Slicing with step -1 reverses."},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning": "greet back"},
        {"role": "user", "content": "Translate 'chat' to English, with ünïcödé 😀"},
        {"role": "assistant", "content": "cat", "reasoning_content": "French chat = cat"},
    ],
    [
        {"role": "user", "content": "Plan first."},
        {"role": "assistant", "channel": "commentary", "content": "thinking aloud for the user"},
        {"role": "assistant", "content": "Done."},
    ],
]


def _harmony_messages(flat: list[dict[str, str]]):
    encoding()  # sets TIKTOKEN_ENCODINGS_BASE for openai_harmony
    import openai_harmony as h

    enc = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)
    roles = {"system": h.Role.SYSTEM, "developer": h.Role.DEVELOPER, "user": h.Role.USER, "assistant": h.Role.ASSISTANT}
    msgs = []
    for m in flat:
        msg = h.Message.from_role_and_content(roles[m["role"]], m["content"])
        msgs.append(msg.with_channel(m["channel"]) if m["channel"] else msg)
    return h, enc, msgs


def _harmony(flat: list[dict[str, str]]) -> list[int]:
    h, enc, msgs = _harmony_messages(flat)
    conv = h.Conversation.from_messages(msgs)
    return enc.render_conversation_for_training(conv, h.RenderConversationConfig(auto_drop_analysis=False))


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_render_equals_openai_harmony(conv):
    flat = sft.normalize(conv)
    ids, mask = sft.render(flat)
    assert ids == _harmony(flat)
    assert len(mask) == len(ids)
    assert ids[-1] == SPECIAL["<|return|>"]


def test_earlier_reasoning_dropped_last_kept():
    flat = sft.normalize(CONVERSATIONS[2])
    assert [m["channel"] for m in flat if m["role"] == "assistant"] == ["final", "analysis", "final"]
    assert "greet back" not in encoding().decode(sft.render(flat)[0])
    flat_all = sft.normalize(CONVERSATIONS[2], keep_all_analysis=True)
    assert [m["channel"] for m in flat_all if m["role"] == "assistant"] == ["analysis", "final", "analysis", "final"]
    assert sft.render(flat_all)[0] == _harmony(flat_all)


def _expected_mask(flat, analysis_loss=True):
    """Loss mask rebuilt from openai_harmony's rendering of each message on its own."""
    _, enc, msgs = _harmony_messages(flat)
    out = []
    prev_asst = False
    for m, msg in zip(flat, msgs):
        n = len(enc.render(msg))
        trained = m["role"] == "assistant" and (analysis_loss or m["channel"] != "analysis")
        out += [int(trained and prev_asst)] * 2 + [int(trained)] * (n - 2)  # 2: <|start|> + role
        prev_asst = m["role"] == "assistant"
    return out


@pytest.mark.parametrize("analysis_loss", [True, False])
def test_loss_mask_covers_only_assistant_output(analysis_loss):
    enc = encoding()
    flat = sft.normalize(CONVERSATIONS[1])
    ids, mask = sft.render(flat, analysis_loss=analysis_loss)
    assert mask == _expected_mask(flat, analysis_loss)
    trained = enc.decode([t for t, m in zip(ids, mask) if m])
    if analysis_loss:
        assert trained == (
            "<|channel|>analysis<|message|>Slicing with step -1 reverses.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Use `xs[::-1]`.<|return|>"
        )
    else:
        assert trained == "<|start|>assistant<|channel|>final<|message|>Use `xs[::-1]`.<|return|>"
    for word in ("careful", "Python", "Reverse", "user", "system"):
        assert word not in trained


@pytest.mark.parametrize(
    "conv,reason",
    [
        ([], "missing_messages"),
        ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], "bad_role"),
        ([{"role": "user", "content": "only a question"}], "no_final_answer"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}], "bad_message"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "channel": "x"}], "bad_channel"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}], "empty"),
    ],
)
def test_bad_conversations_are_named(conv, reason):
    with pytest.raises(sft.ConversationError) as e:
        sft.normalize(conv)
    assert e.value.reason == reason


def test_pack_best_fit():
    bins = sft.pack([5, 3, 7, 2, 8, 1], 10)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum([5, 3, 7, 2, 8, 1][i] for i in b) <= 10 for b in bins)
    assert len(bins) == 3  # 26 tokens need at least 3 bins of 10
    with pytest.raises(ValueError, match="> pack capacity"):
        sft.pack([11], 10)


def varied_conversations(n: int, seed: int) -> list[str]:
    """n JSONL lines: CONVERSATIONS in turn, each user turn lengthened by 1-59 random words (varied lengths to pack)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        conv = json.loads(json.dumps(CONVERSATIONS[i % len(CONVERSATIONS)]))
        conv[0]["content"] += " " + " ".join(f"w{int(x)}" for x in rng.integers(0, 1000, size=int(rng.integers(1, 60))))
        lines.append(json.dumps({"messages": conv}))
    return lines


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    src = root / "chat.jsonl"
    lines = varied_conversations(120, seed=0)
    lines.insert(5, "{not json")
    lines.insert(9, json.dumps({"messages": [{"role": "user", "content": "no answer"}]}))
    lines.insert(
        11,
        json.dumps({"messages": [{"role": "user", "content": "long " * 400}, {"role": "assistant", "content": "ok"}]}),
    )
    lines.insert(13, json.dumps({"conversation": []}))
    src.write_text("\n".join(lines) + "\n")
    cfg = sft.SFTConfig(inputs=[str(src)], output=root / "out", seq_length=256, val_fraction=0.1)
    return cfg, sft.run(cfg)


def test_sft_manifest_and_packing_efficiency(packed):
    cfg, m = packed
    assert m["records"] == 124
    assert {r: v["docs"] for r, v in m["dropped"].items()} == {
        "bad_json": 1,
        "no_final_answer": 1,
        "too_long": 1,
        "missing_messages": 1,
    }
    assert m["dropped"]["bad_json"]["examples"] == [f"{cfg.inputs[0]}:6"]
    tr, va = m["splits"]["train"], m["splits"]["validation"]
    assert tr["conversations"] + va["conversations"] == 120 and va["conversations"] > 0
    assert 80.0 < tr["packing_efficiency"] <= 100.0
    meta = json.loads((cfg.output / m["files"]["metadata"]).read_text())
    assert meta[0]["packing_efficiency"] == tr["packing_efficiency"] and meta[0]["pack_size"] == 256
    assert any(o.endswith(str(cfg.output / m["files"]["train"])) for o in m["overrides"])


def test_bridge_packed_dataset_reads_it(packed):
    """Megatron-Bridge's own loader and collate: the trained labels are exactly the assistant output."""
    import_bridge()
    from megatron.bridge.data.builders.gpt_sft import GPTSFTDatasetBuilder, GPTSFTDatasetConfig
    from megatron.bridge.data.packing import PackedSequenceSpecs

    cfg, m = packed
    enc = encoding()
    paths = sft.packed_paths(cfg.output, cfg.seq_length)

    class Tok:
        eos_id = SPECIAL["<|return|>"]  # what the recipes' HF tokenizer reports (eos_token=<|return|>)
        eod = SPECIAL["<|endoftext|>"]

    # the SFT recipe's dataset config (recipes/gpt_oss.py _sft_dataset) with the packed paths set
    dcfg = GPTSFTDatasetConfig(
        seq_length=cfg.seq_length,
        dataset_root=str(cfg.output),
        enable_offline_packing=True,
        offline_packing_specs=PackedSequenceSpecs(
            packed_sequence_size=cfg.seq_length,
            packed_train_data_path=str(paths["train"]),
            packed_val_data_path=str(paths["validation"]),
            packed_metadata_path=str(paths["metadata"]),
        ),
        dataset_kwargs={"pad_to_max_length": True},
        do_test=False,
    )
    ds, val, _ = GPTSFTDatasetBuilder(dcfg, tokenizer=Tok()).build()
    assert len(val) == m["splits"]["validation"]["packs"]
    assert len(ds) == m["splits"]["train"]["packs"]
    batch = ds.collate_fn([ds[i] for i in range(len(ds))])
    assert batch["tokens"].shape == (len(ds), 256)
    trained = batch["labels"][batch["loss_mask"].bool()].tolist()
    # every conversation's assistant output, nothing else: rebuild it from the renderer per conversation
    expected_total = m["splits"]["train"]["loss_tokens"]
    assert len(trained) == expected_total
    text = enc.decode(trained)
    assert "<|start|>user" not in text and "<|start|>system" not in text
    assert re.search(r"\bw\d+", text) is None  # the random words live in user/system prompts only
    assert text.count("<|return|>") == m["splits"]["train"]["conversations"]
    # a packed row is whole conversations back to back, each starting with <|start|>
    row = ds[0]
    for s in row["seq_boundaries"][:-1]:
        assert row["input_ids"][s] == SPECIAL["<|start|>"]
    assert row["input_ids"][row["seq_boundaries"][1] - 1] == SPECIAL["<|return|>"]
