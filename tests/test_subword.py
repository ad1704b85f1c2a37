"""BPE-dropout: training batches segmented anew, their text and every pair kept."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.conftest import REVERSAL_OVERRIDES, reversal_pairs, run_cli, write_text_corpus
from translate.batching import Examples
from translate.config import Config, ConfigError, DataConfig, TrainConfig
from translate.subword import BpeDropout, with_bpe_dropout
from translate.tokenizer import BOS, EOS, PAD, UNK, train_tokenizer

WORDS = "the a cat dog sat ran over under mat garden window little quickly yellow".split()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(n)]


@pytest.fixture(scope="module")
def split():
    src, tgt = sentences(200, 1), [s.upper() for s in sentences(200, 1)]
    tokenizer = train_tokenizer(src + tgt, vocab_size=120, byte_fallback=False)
    return tokenizer, Examples(tokenizer.encode(src), tokenizer.encode(tgt)), src, tgt


def rows(ids, lengths):
    return [row[:n] for row, n in zip(ids.tolist(), lengths.tolist())]


def test_bpe_dropout_resegments_each_batch_and_keeps_its_text(split):
    tokenizer, examples, src, tgt = split
    sampled = BpeDropout(examples, tokenizer, 0.3, seed=5)
    index = np.arange(0, 200, 7)
    fixed = examples.batch(index)
    changed = 0
    for _ in range(3):
        batch = sampled.batch(index)
        src_ids = rows(batch.src, batch.src_lengths - 1)
        tgt_lengths = (batch.tgt_out != PAD).sum(1) - 1
        tgt_ids = rows(batch.tgt_out, tgt_lengths)
        # the same sentences, in the same order: only the segmentation may change
        assert tokenizer.decode(src_ids) == [src[i] for i in index]
        assert tokenizer.decode(tgt_ids) == [tgt[i] for i in index]
        # well-formed: EOS ends the source and the output side, BOS starts the input side
        assert batch.src[np.arange(len(index)), batch.src_lengths - 1].eq(EOS).all()
        assert batch.tgt_out[np.arange(len(index)), tgt_lengths].eq(EOS).all()
        assert batch.tgt_in[:, 0].eq(BOS).all() and rows(batch.tgt_in[:, 1:], tgt_lengths) == tgt_ids
        # dropping merges never joins pieces: each sentence has at least its fixed count
        assert (batch.src_lengths >= fixed.src_lengths).all()
        changed += int(batch.src_lengths.sum() > fixed.src_lengths.sum())
        changed += int(batch.tgt_out.ne(PAD).sum() > fixed.tgt_out.ne(PAD).sum())
    assert changed >= 4, "p=0.3 left nearly every batch as the fixed segmentation"
    # batching and lengths are the split's own
    assert [b.tolist() for b in sampled.batches(batch_tokens=200)] == [
        b.tolist() for b in examples.batches(batch_tokens=200)
    ]
    assert len(sampled) == len(examples)


def test_a_sentence_with_unknown_pieces_keeps_its_segmentation(split):
    tokenizer, _, _, _ = split
    sampled = BpeDropout(Examples([[UNK, 5, 6]], [[7]]), tokenizer, 0.9, seed=1)
    assert sampled.resegment([[UNK, 5, 6]]) == [[UNK, 5, 6]]


def test_bpe_dropout_zero_is_the_split_itself_and_bad_values_are_refused(split):
    tokenizer, examples, _, _ = split
    assert with_bpe_dropout(examples, tokenizer, 0.0, seed=1) is examples
    assert isinstance(with_bpe_dropout(examples, tokenizer, 0.1, seed=1), BpeDropout)
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="train.bpe_dropout"):
            TrainConfig(bpe_dropout=bad)
    with pytest.raises(ConfigError, match="needs data.spm_model_type=bpe"):
        Config(data=DataConfig(spm_model_type="unigram"), train=TrainConfig(bpe_dropout=0.1))
    Config(data=DataConfig(spm_model_type="unigram"))  # no dropout: any model type


def test_training_with_bpe_dropout_through_the_command_line(tmp_path):
    write_text_corpus(
        tmp_path / "corpus", {name: reversal_pairs(n, seed) for name, n, seed in (("train", 300, 1), ("val", 20, 2))}
    )
    args = [*REVERSAL_OVERRIDES, f"data.path={tmp_path / 'corpus'}", "run_dir=run", "train.max_steps=20"]
    result = run_cli("train", *args, "train.bpe_dropout=0.1", "train.valid_every=10", cwd=tmp_path)
    log = result.stderr.decode()
    assert result.returncode == 0, log[-3000:]
    assert "segmented anew with BPE-dropout 0.1" in log
    assert (tmp_path / "run" / "best.pt").is_file()
    refused = run_cli("train", *args, "data.spm_model_type=unigram", "train.bpe_dropout=0.1", cwd=tmp_path)
    assert refused.returncode != 0 and "needs data.spm_model_type=bpe" in refused.stderr.decode()
