"""data_prep sft --pad-to-multiple: packs for the context-parallel SFT recipes (gpt_oss_*_sft_32k), read
by Megatron-Bridge's own packed loader and collate exactly as gpt_oss_20b_sft_32k reads them
(its dataset config, pad_seq_to_mult=4, and the recipe's real tokenizer), and the pre-flight check
that refuses a pack padded to another multiple."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from test_data_prep_sft import varied_conversations

from data_prep import sft
from data_prep.__main__ import main as data_prep_main
from gptoss.tokenizer import SPECIAL
from megatron_cpu.compat import import_bridge

SEQ = 256
MULT = 4  # gpt_oss_20b_sft_32k: CP2 -> pad_seq_to_mult 4
EOS = SPECIAL["<|return|>"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same 120 harmony conversations packed twice: by default, and through the CLI with --pad-to-multiple 4."""
    root = tmp_path_factory.mktemp("sft_cp")
    src = root / "chat.jsonl"
    lines = varied_conversations(120, seed=1)
    src.write_text("\n".join(lines) + "\n")
    plain = sft.run(sft.SFTConfig(inputs=[str(src)], output=root / "plain", seq_length=SEQ), log=lambda s: None)
    argv = ["sft", str(src), "-o", str(root / "cp"), "--seq-length", str(SEQ), "--val-fraction", "0"]
    assert data_prep_main([*argv, "--pad-to-multiple", str(MULT)]) == 0
    padded = json.loads((root / "cp" / "manifest.json").read_text())
    return root, plain, padded


@pytest.fixture(scope="module")
def recipe(data):
    """gpt_oss_20b_sft_32k with the overrides data_prep printed for the padded pack, and its tokenizer."""
    import recipes

    _, _, padded = data
    cfg = recipes.build("gpt_oss_20b_sft_32k", padded["overrides"])  # imports megatron.bridge (megatron_cpu.compat)
    import_bridge()
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    return cfg, build_tokenizer(cfg.tokenizer)


def _sequences(path) -> list[tuple[list[int], list[int]]]:
    """(input_ids, loss_mask) of every sequence of every pack of a packed parquet file."""
    t = pq.read_table(path).to_pylist()
    out = []
    for row in t:
        bounds = [*row["seq_start_id"], len(row["input_ids"])]
        out += [(row["input_ids"][a:b], row["loss_mask"][a:b]) for a, b in zip(bounds, bounds[1:])]
    return out


def test_padded_span():
    assert [sft.padded_span(n, 4) for n in (2, 5, 6, 9)] == [4, 4, 8, 8]  # len - 1 rounded up to 4
    assert [sft.padded_span(n, 1) for n in (2, 5, 6)] == [1, 4, 5]


def test_padded_pack_follows_the_bridge_rule(data):
    root, plain, padded = data
    assert (plain["pad_to_multiple"], padded["pad_to_multiple"]) == (1, MULT)
    assert padded["splits"]["train"]["conversations"] == plain["splits"]["train"]["conversations"] == 120
    assert padded["splits"]["train"]["tokens"] == plain["splits"]["train"]["tokens"]
    assert plain["splits"]["train"]["padding_tokens"] == 0 < padded["splits"]["train"]["padding_tokens"]
    meta = json.loads((root / "cp" / padded["files"]["metadata"]).read_text())
    assert [m["pad_seq_to_mult"] for m in meta] == [MULT]
    assert "pad_seq_to_mult" not in json.loads((root / "plain" / plain["files"]["metadata"]).read_text())[0]
    seqs = _sequences(root / "cp" / padded["files"]["train"])
    assert all((len(ids) - 1) % MULT == 0 for ids, _ in seqs)  # offline.py: stored = ceil(len-1, m) + 1
    for row in pq.read_table(root / "cp" / padded["files"]["train"]).to_pylist():
        assert len(row["input_ids"]) - len(row["seq_start_id"]) <= SEQ
    # stripping the padding (eos, no loss) gives back exactly the default packing's sequences
    stripped = Counter()
    for ids, mask in seqs:
        n = len(ids)
        while ids[n - 1] == EOS and ids[n - 2] == EOS:
            n -= 1
        assert set(ids[n:]) <= {EOS} and not any(mask[n - 1 :])
        stripped[(tuple(ids[:n]), tuple(mask[:n]))] += 1
    assert stripped == Counter((tuple(i), tuple(m)) for i, m in _sequences(root / "plain" / plain["files"]["train"]))


def test_bridge_reads_padded_boundaries(data, recipe):
    """The recipe's dataset config, built by the bridge's GPTSFTDatasetBuilder with the recipe's tokenizer:
    cu_seqlens_padded are the padded spans (multiples of 4), cu_seqlens the conversations' own lengths,
    the padding has no loss, and the trained labels are the default packing's."""
    import_bridge()
    from megatron.bridge.data.builders.gpt_sft import GPTSFTDatasetBuilder

    root, plain, padded = data
    cfg, tok = recipe
    assert (tok.eos_id, tok.eod) == (EOS, EOS)  # what the pad id and the loader's logical-end rule rest on
    assert cfg.dataset.offline_packing_specs.pad_seq_to_mult == MULT
    ds, val, _ = GPTSFTDatasetBuilder(cfg.dataset, tokenizer=tok).build()
    assert val is None and len(ds) == padded["splits"]["train"]["packs"]
    batch = ds.collate_fn([ds[i] for i in range(len(ds))])
    assert batch["tokens"].shape == (len(ds), SEQ)
    assert batch["cu_seqlens_kv_padded"] is batch["cu_seqlens_q_padded"]
    want = Counter((tuple(i), tuple(m[:-1])) for i, m in _sequences(root / "plain" / plain["files"]["train"]))
    got = Counter()
    for r in range(len(ds)):
        n = len(ds[r]["seq_boundaries"]) - 1
        cu, cup = batch["cu_seqlens_q"][r].tolist(), batch["cu_seqlens_q_padded"][r].tolist()
        tokens, labels, mask = (batch[k][r].tolist() for k in ("tokens", "labels", "loss_mask"))
        assert cup[0] == cu[0] == 0 and cup[n] <= SEQ
        for j in range(n):
            span, logical = cup[j + 1] - cup[j], cu[j + 1] - cu[j]
            assert span % MULT == 0 and 0 <= span - logical < MULT  # the bridge's rule, and no more padding
            a = cup[j]
            assert set(tokens[a + logical : a + span]) <= {EOS} and set(labels[a + logical : a + span]) <= {EOS}
            assert not any(mask[a + logical : a + span])  # no loss on the padding (nor on <|return|> as input)
            real = tokens[a : a + logical] + [labels[a + logical - 1]]  # the conversation, unshifted
            assert sft.padded_span(len(real), MULT) == span
            got[(tuple(real), tuple(mask[a : a + logical]))] += 1
        # the pack's tail is one more padded segment up to the pack size, zero-length in cu_seqlens
        if cup[n] < SEQ:
            assert cup[n + 1] == SEQ and cu[n + 1] == cu[n]
            assert not any(mask[cup[n] :])
    assert got == want
    assert int(batch["loss_mask"].sum()) == plain["splits"]["train"]["loss_tokens"]


def test_check_data_refuses_another_multiple(data, recipe):
    """recipes.run.check_data: the padded pack passes for CP2; the default (unpadded) pack is refused with
    the fix; a pack padded to 4 is refused where 8 is needed (120b, CP4), accepted where 1 is."""
    from recipes.run import RunError, check_data

    root, plain, padded = data
    cfg, _ = recipe
    specs = cfg.dataset.offline_packing_specs
    check_data(cfg)
    specs.pad_seq_to_mult = 8
    with pytest.raises(RunError, match=r"--pad-to-multiple 4, .* multiple of 8 .*--pad-to-multiple 8`$"):
        check_data(cfg)
    specs.pad_seq_to_mult = 1
    check_data(cfg)
    specs.pad_seq_to_mult = MULT
    cfg.dataset.dataset_root = str(root / "plain")
    specs.packed_train_data_path = str(root / "plain" / plain["files"]["train"])
    specs.packed_metadata_path = str(root / "plain" / plain["files"]["metadata"])
    with pytest.raises(RunError) as e:
        check_data(cfg)
    assert "\n" not in str(e.value)
    assert str(e.value).endswith(f"`python -m data_prep sft ... --seq-length {SEQ} --pad-to-multiple 4`")


def test_pad_multiple_must_divide_seq_length(tmp_path):
    with pytest.raises(ValueError, match=r"--pad-to-multiple 4 must be >= 1 and divide --seq-length 250"):
        sft.run(
            sft.SFTConfig(inputs=[str(tmp_path / "x.jsonl")], output=tmp_path / "o", seq_length=250, pad_to_multiple=4)
        )
