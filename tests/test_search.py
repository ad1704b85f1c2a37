"""Beam and greedy search against a fake model with hand-written probabilities, and
properties of search over a real (random) model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from translate.batching import make_batch
from translate.config import ModelConfig
from translate.model import Seq2Seq
from translate.search import beam_search, greedy_search, length_penalty
from translate.tokenizer import BOS, EOS

A, B, C = 4, 5, 6
V = 7


@dataclass
class FakeState:
    last: torch.Tensor  # (N,) previous token

    def index_select(self, index):
        return FakeState(self.last.index_select(0, index))


class BigramModel:
    """Next-token probabilities depend only on the previous token (a fixed table)."""

    def __init__(self, table: dict[int, dict[int, float]]):
        self.log_table = torch.full((V, V), float("-inf"))
        for prev, row in table.items():
            for tok, p in row.items():
                self.log_table[prev, tok] = math.log(p)
        self.calls = 0

    def encode(self, src, src_lengths):
        return FakeState(torch.zeros(src.size(0), dtype=torch.long)), FakeState(src[:, 0].clone())

    def decode_step(self, tokens, state, memory):
        self.calls += 1
        return self.log_table[tokens].clone(), FakeState(tokens)

    @staticmethod
    def reorder(x, index):
        return x.index_select(index)


# From BOS: A 0.6, B 0.4. After A: A/B 0.3 each, EOS 0.4. After B: EOS 0.9, C 0.1.
# After C: EOS 1.0. Greedy: A EOS (0.24). Best sequence: B EOS (0.36).
TABLE = {
    BOS: {A: 0.6, B: 0.4},
    A: {A: 0.3, B: 0.3, EOS: 0.4},
    B: {EOS: 0.9, C: 0.1},
    C: {EOS: 1.0},
}


def src_batch(n: int = 1, length: int = 3):
    batch = make_batch([[A] * length for _ in range(n)])
    return batch.src, batch.src_lengths


def test_greedy_follows_the_locally_best_token():
    (hyp,) = greedy_search(BigramModel(TABLE), *src_batch(), max_len_a=0, max_len_b=10)
    assert hyp.tokens == [A]
    assert hyp.log_prob == pytest.approx(math.log(0.6 * 0.4))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_finds_the_better_sequence_with_exact_scores(alpha):
    (nbest,) = beam_search(
        BigramModel(TABLE), *src_batch(), beam_size=2, length_penalty_alpha=alpha, max_len_a=0, max_len_b=10, n_best=2
    )
    assert [h.tokens for h in nbest] == [[B], [A]]
    assert nbest[0].log_prob == pytest.approx(math.log(0.4 * 0.9))
    assert nbest[0].score == pytest.approx(math.log(0.36) / length_penalty(2, alpha))
    assert nbest[1].score == pytest.approx(math.log(0.24) / length_penalty(2, alpha))


def test_length_penalty_can_prefer_a_longer_hypothesis():
    # B C EOS: 0.4*0.1*1.0 = 0.04 ; A EOS 0.24 ; B EOS 0.36. With a strong penalty on
    # short outputs, longer ones gain: compare with the exact normalized scores.
    table = {BOS: {A: 0.5, B: 0.5}, A: {EOS: 0.5, C: 0.5}, B: {EOS: 0.45, C: 0.55}, C: {EOS: 1.0}}
    alpha = 3.0
    (nbest,) = beam_search(
        BigramModel(table), *src_batch(), beam_size=4, length_penalty_alpha=alpha, max_len_a=0, max_len_b=10, n_best=4
    )
    expected = {
        (A,): math.log(0.25) / length_penalty(2, alpha),
        (B,): math.log(0.225) / length_penalty(2, alpha),
        (A, C): math.log(0.25) / length_penalty(3, alpha),
        (B, C): math.log(0.275) / length_penalty(3, alpha),
    }
    assert nbest[0].tokens == [B, C]
    assert {tuple(h.tokens): h.score for h in nbest} == pytest.approx(expected)


def test_eos_is_forced_at_the_length_limit():
    table = {BOS: {A: 1.0}, A: {A: 0.9, B: 0.1 - 1e-6, EOS: 1e-6}, B: {A: 1.0 - 1e-6, EOS: 1e-6}}  # EOS unlikely
    for length in (1, 3):
        limit = int(1.0 * length + 1)
        (nbest,) = beam_search(
            BigramModel(table),
            *src_batch(length=length),
            beam_size=2,
            length_penalty_alpha=0.0,
            max_len_a=1.0,
            max_len_b=1,
            n_best=2,
        )
        assert nbest[0].tokens == [A] * limit
        assert [len(h.tokens) for h in nbest] == [limit, limit]
        (g,) = greedy_search(BigramModel(table), *src_batch(length=length), max_len_a=1.0, max_len_b=1)
        assert g.tokens == [A] * limit


def test_early_stop_ends_a_sentence_once_its_best_candidate_ends():
    # step 2's best candidate is B EOS (0.36); beam 3 then holds 2 finished hypotheses (B, A)
    # and, without early stopping, goes on until a third ends
    kwargs = dict(beam_size=3, length_penalty_alpha=0.0, max_len_a=0, max_len_b=10)
    full, early = BigramModel(TABLE), BigramModel(TABLE)
    (thorough,) = beam_search(full, *src_batch(), **kwargs, n_best=3)
    (quick,) = beam_search(early, *src_batch(), **kwargs, early_stop=True)
    assert early.calls == 2 < full.calls
    assert quick[0].tokens == thorough[0].tokens == [B]
    assert len(thorough) == 3
    (two,) = beam_search(BigramModel(TABLE), *src_batch(), **kwargs, n_best=2, early_stop=True)
    assert [h.tokens for h in two] == [[B], [A]]  # n_best finished hypotheses are still waited for


def test_a_beam_wider_than_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        beam_search(
            BigramModel(TABLE), *src_batch(), beam_size=V + 1, length_penalty_alpha=0.0, max_len_a=0, max_len_b=5
        )


def test_pad_and_bos_are_never_generated():
    table = {BOS: {0: 0.5, BOS: 0.3, A: 0.2}, A: {EOS: 1.0}}
    (nbest,) = beam_search(
        BigramModel(table), *src_batch(), beam_size=3, length_penalty_alpha=0.0, max_len_a=0, max_len_b=5, n_best=1
    )
    assert nbest[0].tokens == [A]


def small_model(decoder: str = "fused", attention: str = "general", seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        emb_dim=16,
        enc_hidden=16,
        dec_hidden=16,
        attn_dim=16,
        heads=2,
        dropout=0.0,
        decoder=decoder,
        attention=attention,
    )
    model = Seq2Seq(cfg, 30).eval()
    with torch.no_grad():  # sharpen the random distributions so hypotheses differ and end
        model.decoder.output.weight.mul_(8)
    return model


def random_sentences(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(4, 30, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)
    ]


@pytest.mark.parametrize("decoder", ["fused", "input_feed"])
def test_a_sentence_translates_the_same_alone_and_in_any_batch(decoder):
    model = small_model(decoder, "bahdanau")
    sents = random_sentences(9, seed=1)
    kwargs = dict(beam_size=4, length_penalty_alpha=1.0, max_len_a=1.5, max_len_b=5)
    batch = make_batch(sents)
    together = [h[0].tokens for h in beam_search(model, batch.src, batch.src_lengths, **kwargs)]
    alone = []
    for s in sents:
        b = make_batch([s])
        alone.append(beam_search(model, b.src, b.src_lengths, **kwargs)[0][0].tokens)
    assert together == alone
    reversed_batch = make_batch(sents[::-1])
    assert [h[0].tokens for h in beam_search(model, reversed_batch.src, reversed_batch.src_lengths, **kwargs)][
        ::-1
    ] == together


def test_beam_one_equals_greedy():
    model = small_model("fused", "multihead")
    batch = make_batch(random_sentences(12, seed=2))
    greedy = greedy_search(model, batch.src, batch.src_lengths, max_len_a=1.5, max_len_b=5)
    beam = beam_search(
        model, batch.src, batch.src_lengths, beam_size=1, length_penalty_alpha=0.0, max_len_a=1.5, max_len_b=5
    )
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]
    assert [h.log_prob for h in greedy] == pytest.approx([b[0].log_prob for b in beam], abs=1e-4)


def test_wider_beam_never_scores_worse_on_the_fake_model():
    model = BigramModel(TABLE)
    scores = [
        beam_search(model, *src_batch(), beam_size=k, length_penalty_alpha=0.0, max_len_a=0, max_len_b=10)[0][
            0
        ].log_prob
        for k in (1, 2, 3)
    ]
    assert scores[0] < scores[1] == pytest.approx(scores[2])
