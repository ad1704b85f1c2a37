"""Batches: padded id tensors, the shifted target, masks and token counts.

Training batches are grouped by length (bucketing) and capped by a token budget, so a
batch of short sentences holds many and padding stays low.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from translate.tokenizer import BOS, EOS, PAD


@dataclass
class Batch:
    """src (B, S) ids ending in EOS; tgt_in (B, T) = BOS y; tgt_out (B, T) = y EOS."""

    src: torch.Tensor
    src_lengths: torch.Tensor  # (B,) on CPU, as pack_padded_sequence wants
    tgt_in: torch.Tensor | None = None
    tgt_out: torch.Tensor | None = None

    @property
    def ntokens(self) -> int:
        """Real (non-pad) target tokens, EOS included."""
        return int((self.tgt_out != PAD).sum()) if self.tgt_out is not None else 0

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.src), self.src_lengths, move(self.tgt_in), move(self.tgt_out))


def make_batch(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]] | None = None) -> Batch:
    """Build a batch from subword ids (without specials); EOS/BOS are added here."""
    return batch_of_rows(*rows(src), *(rows(tgt) if tgt is not None else (None, None)))


def rows(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(B, longest) int64 ids right-padded with PAD, and the (B,) lengths."""
    lengths = lengths_of(seqs)
    out = np.full((len(seqs), int(lengths.max(initial=0))), PAD, dtype=np.int64)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = seq
    return out, lengths


def gather(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B, max length) int64: row b holds ids[starts[b] : starts[b] + lengths[b]], then PAD."""
    cols = np.arange(int(lengths.max(initial=0)))
    inside = cols < lengths[:, None]  # (B, L)
    return np.where(inside, ids[np.where(inside, starts[:, None] + cols, 0)], PAD).astype(np.int64)


def batch_of_rows(
    src: np.ndarray,
    src_lengths: np.ndarray,
    tgt: np.ndarray | None = None,
    tgt_lengths: np.ndarray | None = None,
) -> Batch:
    """A batch from padded id rows (B, S) and (B, T) without specials: src gets EOS,
    tgt_in = BOS y, tgt_out = y EOS (a tgt of None: a source-only batch, for decoding)."""

    def padded(ids: np.ndarray, first: int) -> np.ndarray:
        out = np.full((len(ids), ids.shape[1] + 1), PAD, dtype=np.int64)
        out[:, first : first + ids.shape[1]] = ids
        return out

    src_ids = padded(src, 0)
    src_ids[np.arange(len(src_lengths)), src_lengths] = EOS
    batch = Batch(torch.from_numpy(src_ids), torch.from_numpy(src_lengths + 1).long())
    if tgt is not None:
        tgt_in, tgt_out = padded(tgt, 1), padded(tgt, 0)
        tgt_in[:, 0] = BOS
        tgt_out[np.arange(len(tgt_lengths)), tgt_lengths] = EOS
        batch.tgt_in, batch.tgt_out = torch.from_numpy(tgt_in), torch.from_numpy(tgt_out)
    return batch


@dataclass
class Examples:
    """Tokenized pairs held in memory (subword ids, no specials), cut into batches by index arrays.

    :class:`translate.prepared.TokenizedPairs` is the same thing read from disk; training
    takes either."""

    src: list[list[int]]
    tgt: list[list[int]]

    def __len__(self) -> int:
        return len(self.src)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return lengths_of(self.src), lengths_of(self.tgt)

    def batch(self, index: Sequence[int]) -> Batch:
        return make_batch([self.src[i] for i in index], [self.tgt[i] for i in index])

    def batches(self, *, batch_tokens: int, generator: torch.Generator | None = None) -> list[np.ndarray]:
        """Index arrays of token-budget batches (see :func:`token_batches`)."""
        return token_batches(*self.lengths(), batch_tokens=batch_tokens, generator=generator)


def lengths_of(seqs: Sequence[Sequence[int]]) -> np.ndarray:
    return np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))


def token_batches(
    src_lengths: Sequence[int] | np.ndarray,
    tgt_lengths: Sequence[int] | np.ndarray,
    *,
    batch_tokens: int,
    generator: torch.Generator | None = None,
) -> list[np.ndarray]:
    """Group example indices into batches of at most `batch_tokens` padded tokens.

    Examples are sorted by (target, source) length, with random tie-breaking when a
    generator is given, cut greedily into batches whose padded size (count x longest
    side, plus one for BOS/EOS) stays within the budget (a single longer example is a
    batch of its own), and the batch order is shuffled. Vectorized: the Python work grows
    with the number of distinct lengths, not with the corpus, so millions of pairs are
    bucketed in about a second.
    """
    src = np.asarray(src_lengths, dtype=np.int64)
    tgt = np.asarray(tgt_lengths, dtype=np.int64)
    n = len(src)
    if n == 0:
        return []
    noise = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    order = sort_by_length(tgt, src, noise)
    starts = greedy_starts((np.maximum(src, tgt) + 1)[order], batch_tokens)
    batches = np.split(order, starts[1:])
    if generator is not None:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


def sort_by_length(tgt: np.ndarray, src: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Indices sorted by target length, then source length, then `noise` (a permutation)."""
    n, wide = len(noise), int(src.max()) + 1
    if (int(tgt.max()) + 1) * wide * n < 2**62:  # one int64 key sorts 4x faster than lexsort
        return np.argsort((tgt * wide + src) * n + noise)
    return np.lexsort((noise, src, tgt))


def greedy_starts(size: np.ndarray, budget: int) -> np.ndarray:
    """Where each batch starts when `size` (in order) is cut greedily: an example joins the
    open batch while (count + 1) x max(longest, its size) <= budget.

    Walks runs of equal size: inside a run every full batch holds the same count, so the
    batches of a run are one arange."""
    n = len(size)
    edges = np.flatnonzero(np.diff(size)) + 1
    starts: list[np.ndarray] = []
    count = longest = 0  # the open batch
    for a, b, s in zip([0, *edges.tolist()], [*edges.tolist(), n], size[np.r_[0, edges]].tolist()):
        if count:  # fill the open batch first
            longest = max(longest, s)
            take = min(max(budget // longest - count, 0), b - a)
            count, a = count + take, a + take
            if a == b:
                continue
        per = max(budget // s, 1)
        run_starts = np.arange(a, b, per)
        starts.append(run_starts)
        count, longest = b - int(run_starts[-1]), s
    return np.concatenate(starts)
