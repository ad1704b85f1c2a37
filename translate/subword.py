"""BPE-dropout (Provilkov et al. 2020): the training split segmented anew every epoch.

The prepared split holds one segmentation per sentence, the deterministic one that
decoding also uses. With ``train.bpe_dropout=p`` each epoch starts by segmenting every
training sentence again with SentencePiece, each merge skipped with probability p, so the
model sees a word in many splits and learns how its pieces compose: a regularizer for
small corpora. ``train.bpe_dropout_target=false`` samples the source side only. Validation
and decoding never sample.

The epoch's batches are cut from the sampled lengths, so ``train.batch_tokens`` and the
padding stay what they are without sampling (sentences are longer: about 1.2x subwords at
p=0.05, 1.4x at p=0.1 on Multi30k). The segmentation is a function of the epoch's seed,
so a resumed run sees the batches it would have seen. One epoch's sampled ids are held in
memory, 2 bytes per subword (4 past 65,536 pieces).
"""

from __future__ import annotations

import numpy as np
import sentencepiece as spm
import torch

from translate.batching import Batch, batch_of_rows, gather, lengths_of, token_batches
from translate.tokenizer import PAD, UNK, Tokenizer

CHUNK = 10_000  # pairs segmented at a time


class BpeDropout:
    """A training split (:class:`translate.batching.Examples` or prepared) segmented by sampling, per epoch."""

    def __init__(self, pairs, tokenizer: Tokenizer, p: float, *, target: bool = True) -> None:
        if not 0 < p < 1:
            raise ValueError(f"BPE-dropout probability {p} is not in (0, 1)")
        self.pairs, self.tokenizer, self.p, self.target = pairs, tokenizer, p, target
        self.dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
        self.sides: list[_Side] = []  # this epoch's source and target, once batches() has sampled them

    def batches(self, *, batch_tokens: int, generator: torch.Generator | None = None) -> list[np.ndarray]:
        """Segment the split anew (seeded by `generator`'s seed) and cut it into token-budget batches."""
        self.sample(seed=generator.initial_seed() if generator is not None else 0)
        src, tgt = (side.lengths for side in self.sides)
        return token_batches(src, tgt, batch_tokens=batch_tokens, generator=generator)

    def batch(self, index) -> Batch:
        """The batch of pairs `index` as this epoch segmented them."""
        if not self.sides:
            raise RuntimeError("BpeDropout.batch before batches(): no epoch has been segmented")
        i = np.asarray(index, dtype=np.int64)
        (src, src_len), (tgt, tgt_len) = (side.rows(i) for side in self.sides)
        return batch_of_rows(src, src_len, tgt, tgt_len)

    def sample(self, *, seed: int) -> None:
        """This epoch's segmentation of every pair, the same for the same seed."""
        spm.set_random_generator_seed(seed % (1 << 32))  # SentencePiece's sampler has one process-wide generator
        kept = None if self.target or not self.sides else self.sides[1]  # a fixed target is read once
        src, tgt = [], []
        for start in range(0, len(self.pairs), CHUNK):
            fixed = self.pairs.batch(np.arange(start, min(start + CHUNK, len(self.pairs))))
            src += self.resegment(_ids(fixed.src, fixed.src_lengths - 1))  # without the EOS
            if kept is None:
                ids = _ids(fixed.tgt_out, (fixed.tgt_out != PAD).sum(1) - 1)
                tgt += self.resegment(ids) if self.target else ids
        self.sides = [_Side.of(src, self.dtype), kept or _Side.of(tgt, self.dtype)]

    def resegment(self, seqs: list[list[int]]) -> list[list[int]]:
        """Each id sequence as text, segmented again with merges dropped (one thread, so that
        the seed decides it); a sequence holding <unk>, whose text is lost, stays as it was."""
        sampled = self.tokenizer.sp.encode(
            self.tokenizer.sp.decode(seqs), out_type=int, enable_sampling=True, alpha=self.p, num_threads=1
        )
        return [seq if UNK in seq else new for seq, new in zip(seqs, sampled)]


class _Side:
    """One side of the sampled epoch: ids back to back, with each sentence's start and length."""

    def __init__(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        self.ids, self.lengths = ids, lengths
        self.starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)

    @classmethod
    def of(cls, seqs: list[list[int]], dtype) -> _Side:
        lengths = lengths_of(seqs)
        return cls(np.fromiter((i for seq in seqs for i in seq), dtype=dtype, count=int(lengths.sum())), lengths)

    def rows(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return gather(self.ids, self.starts[i], self.lengths[i]), self.lengths[i]


def _ids(rows: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    return [row[:n] for row, n in zip(rows.tolist(), lengths.tolist())]


def with_bpe_dropout(pairs, tokenizer: Tokenizer, p: float, *, target: bool = True):
    """`pairs` itself when p is 0, else the same split segmented by sampling every epoch
    (the source side only when `target` is false)."""
    return BpeDropout(pairs, tokenizer, p, target=target) if p else pairs
