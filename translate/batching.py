"""Batches: padded id tensors, the shifted target, masks and token counts.

Training batches are grouped by length (bucketing) and capped by a token budget, so a
batch of short sentences holds many and padding stays low.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def pad(seqs: Sequence[Sequence[int]], value: int = PAD) -> torch.Tensor:
    """(B, max_len) long tensor, right-padded."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def make_batch(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]] | None = None) -> Batch:
    """Build a batch from subword ids (without specials); EOS/BOS are added here."""
    src_ids = [list(s) + [EOS] for s in src]
    batch = Batch(pad(src_ids), torch.tensor([len(s) for s in src_ids], dtype=torch.long))
    if tgt is not None:
        batch.tgt_in = pad([[BOS] + list(t) for t in tgt])
        batch.tgt_out = pad([list(t) + [EOS] for t in tgt])
    return batch


@dataclass
class Examples:
    """Tokenized pairs (subword ids, no specials), cut into batches by index lists."""

    src: list[list[int]]
    tgt: list[list[int]]

    def lengths(self) -> tuple[list[int], list[int]]:
        return [len(s) for s in self.src], [len(t) for t in self.tgt]

    def batch(self, index: Sequence[int]) -> Batch:
        return make_batch([self.src[i] for i in index], [self.tgt[i] for i in index])

    def batches(self, *, batch_tokens: int, generator: torch.Generator | None = None) -> list[list[int]]:
        """Index lists of token-budget batches (see :func:`token_batches`)."""
        return token_batches(*self.lengths(), batch_tokens=batch_tokens, generator=generator)


def token_batches(
    src_lengths: Sequence[int],
    tgt_lengths: Sequence[int],
    *,
    batch_tokens: int,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Group example indices into batches of at most `batch_tokens` padded tokens.

    Examples are sorted by (target, source) length, with random tie-breaking when a
    generator is given, cut into batches whose padded size (count x longest side, plus
    one for BOS/EOS) stays within the budget, and the batch order is shuffled.
    """
    n = len(src_lengths)
    if n == 0:
        return []
    if generator is not None:
        noise = torch.randperm(n, generator=generator).tolist()
    else:
        noise = list(range(n))
    order = sorted(range(n), key=lambda i: (tgt_lengths[i], src_lengths[i], noise[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
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
