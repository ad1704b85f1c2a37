"""Corpora of any size: the training split tokenized once into memory-mapped id arrays,
keyed by content, and batched from its length arrays."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from translate.batching import sort_by_length, token_batches
from translate.config import DataConfig
from translate.data import DataError, TextSource, load_corpus, tokenize_pairs
from translate.prepared import prepare

from .conftest import REVERSAL_OVERRIDES, reversal_pairs, run_cli, write_text_corpus


def greedy_reference(src_lengths, tgt_lengths, *, batch_tokens, generator=None) -> list[list[int]]:
    """The bucketing rule written out one example at a time, as translate had it before numpy."""
    n = len(src_lengths)
    if n == 0:
        return []
    noise = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
    order = sorted(range(n), key=lambda i: (tgt_lengths[i], src_lengths[i], noise[i]))
    batches, current, longest = [], [], 0
    for i in order:
        size = max(src_lengths[i], tgt_lengths[i]) + 1
        if current and max(longest, size) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    if generator is not None:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


@pytest.mark.parametrize("trial", range(60))
def test_vectorized_bucketing_cuts_exactly_where_the_greedy_rule_does(trial):
    rng = random.Random(trial)
    n, longest = rng.randint(1, 300), rng.choice([2, 8, 40, 150])
    src = [rng.randint(0, longest) for _ in range(n)]
    tgt = [rng.randint(0, longest) for _ in range(n)]
    budget = rng.choice([1, 7, 60, 300, 1500])
    seeded = trial % 2 == 1
    make = lambda: torch.Generator().manual_seed(trial) if seeded else None  # noqa: E731
    got = [b.tolist() for b in token_batches(src, tgt, batch_tokens=budget, generator=make())]
    assert got == greedy_reference(src, tgt, batch_tokens=budget, generator=make())


def test_lengths_too_large_for_one_sort_key_sort_the_same():
    tgt = np.array([2**40, 5, 2**40, 5])
    src = np.array([3, 2**30, 1, 2**30])
    noise = np.array([0, 3, 2, 1])
    assert sort_by_length(tgt, src, noise).tolist() == [3, 1, 2, 0]


def corpus_with_awkward_pairs(folder, n=400, seed=1):
    pairs = reversal_pairs(n, seed)
    pairs[5] = ("", "X")  # empty source: dropped
    pairs[9] = ("a " * 40, "A")  # over data.max_len: dropped
    return write_text_corpus(folder, {"train": pairs, "val": reversal_pairs(20, 2), "test": reversal_pairs(20, 3)})


def text_config(tmp_path, corpus, **overrides) -> DataConfig:
    fields = dict(path=str(corpus), format="text", src_lang="xx", tgt_lang="yy", test_prefix="test", name="c",
                  artefacts=str(tmp_path / "data"), vocab_size=60, max_len=30, byte_fallback=False)  # fmt: skip
    return DataConfig(**{**fields, **overrides})


def test_the_prepared_pairs_give_exactly_the_batches_of_the_in_memory_path(tmp_path, monkeypatch):
    monkeypatch.setattr("translate.data.CHUNK", 64)  # several chunks, as a large corpus has
    cfg = text_config(tmp_path, corpus_with_awkward_pairs(tmp_path / "corpus"))
    tokenizer, pairs = prepare(cfg, progress=False)
    memory = tokenize_pairs(load_corpus(cfg).train, tokenizer, cfg.max_len)
    assert len(pairs) == len(memory) == 398
    for seed in (0, 1):
        got = pairs.batches(batch_tokens=120, generator=torch.Generator().manual_seed(seed))
        want = memory.batches(batch_tokens=120, generator=torch.Generator().manual_seed(seed))
        assert [b.tolist() for b in got] == [b.tolist() for b in want]
        for index in got:
            a, b = pairs.batch(index), memory.batch(index)
            for name in ("src", "src_lengths", "tgt_in", "tgt_out"):
                assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_a_second_prepare_reuses_the_files_without_tokenizing(tmp_path, monkeypatch, caplog):
    cfg = text_config(tmp_path, corpus_with_awkward_pairs(tmp_path / "corpus"))
    first_tokenizer, first = prepare(cfg, progress=False)
    monkeypatch.setattr("translate.prepared.build", lambda *a, **k: pytest.fail("tokenized again"))
    monkeypatch.setattr("translate.tokenizer.train_tokenizer", lambda *a, **k: pytest.fail("trained again"))
    with caplog.at_level("INFO"):
        tokenizer, again = prepare(cfg, progress=False)
    assert "(reused)" in caplog.text
    assert tokenizer.model_bytes == first_tokenizer.model_bytes and again.where == first.where
    # another data.max_len filters the same files differently, without rebuilding them
    assert len(prepare(text_config(tmp_path, cfg.path, max_len=5), progress=False)[1]) < len(again)


def test_a_changed_corpus_under_the_same_name_is_prepared_anew(tmp_path):
    corpus = corpus_with_awkward_pairs(tmp_path / "corpus")
    cfg = text_config(tmp_path, corpus)
    tokenizer, pairs = prepare(cfg, progress=False)
    train = corpus / "train.yy"
    lines = train.read_text().splitlines()
    lines[0] = lines[0].swapcase()  # same size, other content: still caught
    train.write_text("".join(line + "\n" for line in lines))
    changed_tokenizer, changed = prepare(cfg, progress=False)
    assert changed.where != pairs.where and changed.fingerprint != pairs.fingerprint
    assert changed.batch([0]).tgt_out.tolist() != pairs.batch([0]).tgt_out.tolist()
    assert len(list((tmp_path / "data" / "c").glob("spm.*.model"))) == 2  # a tokenizer per corpus


def test_an_interrupted_build_leaves_nothing_that_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr("translate.data.CHUNK", 50)
    cfg = text_config(tmp_path, corpus_with_awkward_pairs(tmp_path / "corpus"))
    from translate.tokenizer import Tokenizer

    calls = {"n": 0}
    real = Tokenizer.encode

    def failing(self, texts, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, texts, **kw)

    monkeypatch.setattr(Tokenizer, "encode", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, progress=False)
    assert not list((tmp_path / "data" / "c" / "prepared").iterdir())  # no folder, no leftovers
    monkeypatch.setattr(Tokenizer, "encode", real)
    assert len(prepare(cfg, progress=False)[1]) == 398


def test_a_bad_byte_deep_in_the_training_split_names_the_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr("translate.data.CHUNK", 50)
    corpus = corpus_with_awkward_pairs(tmp_path / "corpus")
    data = (corpus / "train.xx").read_bytes().split(b"\n")
    data[299] = b"a \xff b"
    (corpus / "train.xx").write_bytes(b"\n".join(data))
    with pytest.raises(DataError, match=r"train\.xx: line 300: invalid UTF-8 at byte 2"):
        prepare(text_config(tmp_path, corpus), progress=False)


def test_a_missing_line_found_while_streaming_names_both_files_and_the_line(tmp_path):
    corpus = corpus_with_awkward_pairs(tmp_path / "corpus")
    lines = (corpus / "train.yy").read_text().splitlines()
    (corpus / "train.yy").write_text("".join(line + "\n" for line in lines[:-3]))
    source = TextSource(text_config(tmp_path, corpus))
    with pytest.raises(DataError, match=r"train\.xx has 400 lines but .*train\.yy has 397.*line 398 of .*train\.xx"):
        list(source.chunks())


def test_a_hub_layout_folder_is_prepared_through_load_dataset(tmp_path):
    from .test_data import write_hub_layout

    pairs = [(s.lower(), t.lower()) for s, t in reversal_pairs(200, 4)]
    write_hub_layout(tmp_path / "hub", {"train": pairs, "val": pairs[:5], "test": pairs[:5]})
    cfg = DataConfig(path=str(tmp_path / "hub"), src_lang="en", tgt_lang="de", name="h",
                     artefacts=str(tmp_path / "data"), vocab_size=40, byte_fallback=False)  # fmt: skip
    tokenizer, prepared = prepare(cfg, progress=False)
    assert len(prepared) == 200
    assert tokenizer.decode(prepared.batch([0, 1]).src.tolist()) == tokenizer.decode(
        tokenize_pairs(load_corpus(cfg).train, tokenizer, cfg.max_len).batch([0, 1]).src.tolist()
    )


def test_validation_during_training_reads_only_its_first_sentences(tmp_path):
    corpus = write_text_corpus(tmp_path / "c", {"train": reversal_pairs(5, 1), "val": reversal_pairs(30, 2)})
    (corpus / "val.xx").write_bytes((corpus / "val.xx").read_bytes() + b"\xff never read\n")
    (corpus / "val.yy").write_bytes((corpus / "val.yy").read_bytes() + b"never read\n")
    source = TextSource(text_config(tmp_path, corpus))
    assert source.head("valid", 7).src == [s for s, _ in reversal_pairs(30, 2)][:7]
    assert len(source.head("valid", 30)) == 30
    with pytest.raises(DataError, match="line 31"):  # the whole split is read when asked for
        source.head("valid", None)


@pytest.mark.slow
def test_prepare_once_then_train_and_a_resume_on_other_data_is_refused(tmp_path):
    write_text_corpus(
        tmp_path / "one", {"train": reversal_pairs(600, 1), "val": reversal_pairs(20, 2), "test": reversal_pairs(20, 3)}
    )
    write_text_corpus(
        tmp_path / "two", {"train": reversal_pairs(600, 9), "val": reversal_pairs(20, 2), "test": reversal_pairs(20, 3)}
    )
    args = [*REVERSAL_OVERRIDES, "train.max_steps=20", "train.valid_every=20", "data.name=same"]
    prepared = run_cli("prepare", *args, f"data.path={tmp_path / 'one'}", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr.decode()[-2000:]
    assert "600 training pairs" in prepared.stdout.decode() and not (tmp_path / "runs").exists()
    trained = run_cli("train", *args, f"data.path={tmp_path / 'one'}", "run_dir=run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr.decode()[-2000:]
    assert "(reused)" in trained.stderr.decode() and "tokenizing" not in trained.stderr.decode()
    before = (tmp_path / "run" / "last.pt").read_bytes()
    # the same data.name on another corpus: its own tokenizer and ids, and the old run is not resumed on it
    other = run_cli("train", *args, f"data.path={tmp_path / 'two'}", "run_dir=run", cwd=tmp_path)
    err = other.stderr.decode()
    assert other.returncode == 1 and "data_fingerprint" in err and "not the data this run trained on" in err
    assert "Traceback" not in err and (tmp_path / "run" / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_the_scale_benchmark_measures_every_phase(tmp_path, capsys):
    from translate.scale import main

    m30k = tmp_path / "m30k"
    pairs = reversal_pairs(200, 5)
    for split in ("train", "val", "test2016"):
        write_text_corpus(m30k, {split: pairs}, src="en", tgt="de")
    main(["--multi30k", str(m30k), "--sizes", "500", "--steps", "6", "--log-every", "2", "--out", str(tmp_path / "out"),
          "--set", "debug=tiny", "data.vocab_size=60", "data.byte_fallback=false"])  # fmt: skip
    row = json.loads((tmp_path / "out" / "scale.json").read_text())["rows"][0]
    assert row["pairs"] == 500 and row["train_windows"] == 3  # steps 2, 4 and 6
    for key in ("prepare_s", "prepare_peak_mb", "start_to_first_update_s", "train_peak_mb", "train_tgt_tokens_per_s"):
        assert row[key] > 0, key
    assert "| 500 |" in capsys.readouterr().out
