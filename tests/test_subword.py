"""BPE-dropout: each epoch segmented anew, every sentence and the token budget kept."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

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


def epoch(sampled: BpeDropout, seed: int, batch_tokens: int = 200) -> list[np.ndarray]:
    return sampled.batches(batch_tokens=batch_tokens, generator=torch.Generator().manual_seed(seed))


def test_each_epoch_is_segmented_anew_keeping_every_sentence_and_the_token_budget(split):
    tokenizer, examples, src, tgt = split
    sampled = BpeDropout(examples, tokenizer, 0.3)
    with pytest.raises(RuntimeError, match="before batches"):
        sampled.batch(np.arange(3))
    fixed_src, fixed_tgt = examples.lengths()
    seen = []
    for seed in (1, 2):
        order = epoch(sampled, seed)
        # every pair once per epoch
        assert sorted(np.concatenate(order).tolist()) == list(range(len(examples)))
        src_lengths = np.zeros(len(examples), dtype=np.int64)
        tgt_lengths = np.zeros(len(examples), dtype=np.int64)
        for index in order:
            batch = sampled.batch(index)
            n_tgt = (batch.tgt_out != PAD).sum(1) - 1
            src_ids, tgt_ids = rows(batch.src, batch.src_lengths - 1), rows(batch.tgt_out, n_tgt)
            # the same sentences: only the segmentation may change
            assert tokenizer.decode(src_ids) == [src[i] for i in index]
            assert tokenizer.decode(tgt_ids) == [tgt[i] for i in index]
            # well-formed: EOS ends the source and the output side, BOS y is the input side
            assert batch.src[np.arange(len(index)), batch.src_lengths - 1].eq(EOS).all()
            assert batch.tgt_out[np.arange(len(index)), n_tgt].eq(EOS).all()
            assert batch.tgt_in[:, 0].eq(BOS).all() and rows(batch.tgt_in[:, 1:], n_tgt) == tgt_ids
            # cut by the sampled lengths: the padded batch keeps to the budget (one long pair alone may not)
            assert len(index) == 1 or max(batch.src.shape[1], batch.tgt_out.shape[1]) * len(index) <= 200
            src_lengths[index], tgt_lengths[index] = batch.src_lengths.numpy() - 1, n_tgt.numpy()
        # dropping merges never joins pieces, and at p=0.3 it splits many
        assert (src_lengths >= fixed_src).all() and (tgt_lengths >= fixed_tgt).all()
        assert src_lengths.sum() > 1.1 * fixed_src.sum() and tgt_lengths.sum() > 1.1 * fixed_tgt.sum()
        seen.append((src_lengths, [b.tolist() for b in order]))
    assert not np.array_equal(seen[0][0], seen[1][0]), "two epochs were segmented alike"
    # the same seed gives the same epoch: a resumed run sees the batches it would have seen
    again = BpeDropout(examples, tokenizer, 0.3)
    assert [b.tolist() for b in epoch(again, 1)] == [b.tolist() for b in epoch(sampled, 1)] != seen[1][1]
    assert all(np.array_equal(again.batch(b).src, sampled.batch(b).src) for b in epoch(again, 1))


def test_a_sentence_with_unknown_pieces_keeps_its_segmentation(split):
    tokenizer, _, _, _ = split
    sampled = BpeDropout(Examples([[UNK, 5, 6]], [[7]]), tokenizer, 0.9)
    assert sampled.resegment([[UNK, 5, 6]]) == [[UNK, 5, 6]]


def test_bpe_dropout_zero_is_the_split_itself_and_bad_values_are_refused(split):
    tokenizer, examples, _, _ = split
    assert with_bpe_dropout(examples, tokenizer, 0.0) is examples
    assert isinstance(with_bpe_dropout(examples, tokenizer, 0.1), BpeDropout)
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


def test_source_only_bpe_dropout_keeps_the_target_segmentation(split):
    tokenizer, examples, _, _ = split
    sampled = BpeDropout(examples, tokenizer, 0.3, target=False)
    fixed_src, fixed_tgt = examples.lengths()
    seen = []
    for seed in (3, 4):  # the second epoch reuses the target side the first one read
        src_lengths, tgt_lengths = np.zeros(len(examples), dtype=np.int64), np.zeros(len(examples), dtype=np.int64)
        for index in epoch(sampled, seed):
            batch, fixed = sampled.batch(index), examples.batch(index)
            n_tgt = (batch.tgt_out != PAD).sum(1)
            assert rows(batch.tgt_out, n_tgt) == rows(fixed.tgt_out, n_tgt)  # the target as prepared
            src_lengths[index], tgt_lengths[index] = batch.src_lengths.numpy() - 1, n_tgt.numpy() - 1
        assert np.array_equal(tgt_lengths, fixed_tgt) and src_lengths.sum() > 1.1 * fixed_src.sum()
        seen.append(src_lengths)
    assert not np.array_equal(*seen), "the source was not segmented anew in the second epoch"
