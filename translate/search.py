"""Greedy and beam search, batched over sentences and beams.

The driver reads as prose (after OpenNMT-py): encode, tile, then step, advance, reorder
until every sentence is done. It talks to the model only through ``encode``,
``decode_step`` and ``reorder`` and keeps no state outside the call.

Details follow fairseq's sequence generator: each step looks at the 2k best candidates
so that hypotheses ending in EOS do not shrink the beam; an EOS candidate ranked in the
top k finishes a hypothesis; a sentence is done once it holds k finished hypotheses;
padding and BOS are never generated; EOS is forced once a sentence reaches its length
limit ``floor(a * source_length + b)``. Finished sentences leave the batch, so the work
per step shrinks as sentences end. Scores are normalized with the GNMT length penalty
``((5 + |y|) / 6) ** alpha`` (Wu et al. 2016, sec. 7), |y| counting EOS.

With ``need_attention=True`` each hypothesis also carries the attention of every step
that made it, reordered with the beams it came from: a (len(tokens) + 1, H, S) tensor,
one row per output token and one for the EOS step, over the sentence's real source
positions (its EOS included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from translate.tokenizer import BOS, EOS, PAD


class Searchable(Protocol):
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor): ...
    def decode_step(self, tokens: torch.Tensor, state, memory): ...
    def reorder(self, x, index: torch.Tensor): ...


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without EOS
    score: float  # log-probability / length penalty
    log_prob: float
    attention: torch.Tensor | None = None  # (len(tokens) + 1, H, S), when asked for


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src_lengths: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """Per-sentence output limit (non-EOS tokens) from source lengths that include EOS."""
    return (a * (src_lengths - 1).double() + b).floor().long().clamp(min=1)


def _mask_specials(log_probs: torch.Tensor, force_eos: torch.Tensor) -> torch.Tensor:
    """Never generate PAD or BOS; rows flagged in force_eos may only end."""
    log_probs[:, PAD] = float("-inf")
    log_probs[:, BOS] = float("-inf")
    if force_eos.any():
        eos = log_probs[force_eos, EOS]
        log_probs[force_eos] = float("-inf")
        log_probs[force_eos, EOS] = eos
    return log_probs


@torch.inference_mode()
def greedy_search(
    model: Searchable,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    *,
    max_len_a: float,
    max_len_b: int,
    need_attention: bool = False,
) -> list[Hypothesis]:
    """src (B, S) -> one hypothesis per sentence, picking the most probable token each step."""
    memory, state = model.encode(src, src_lengths)
    limits = max_lengths(src_lengths, max_len_a, max_len_b).to(src.device)
    B = src.size(0)
    out = torch.full((B, int(limits.max()) + 1), PAD, dtype=torch.long, device=src.device)
    total = torch.zeros(B, dtype=torch.float64, device=src.device)
    lengths = torch.zeros(B, dtype=torch.long, device=src.device)
    active = torch.arange(B, device=src.device)
    tokens = torch.full((B,), BOS, dtype=torch.long, device=src.device)
    attention = None  # (B, steps, H, S), when asked for
    t = 0
    while active.numel():
        if need_attention:
            log_probs, state, weights = model.decode_step(tokens, state, memory, need_attention=True)
            if attention is None:
                attention = weights.new_zeros(B, out.size(1), weights.size(1), src.size(1))
            attention[active, t] = weights
        else:
            log_probs, state = model.decode_step(tokens, state, memory)
        log_probs = _mask_specials(log_probs, limits[active] <= t)
        best_lp, tokens = log_probs.max(dim=-1)
        out[active, t] = tokens
        total[active] += best_lp.double()
        t += 1
        done = tokens == EOS
        if done.any():
            lengths[active[done]] = t
            keep = (~done).nonzero().squeeze(1)
            active, tokens = active[keep], tokens[keep]
            state, memory = model.reorder(state, keep), model.reorder(memory, keep)
    hyps = [Hypothesis(out[i, : lengths[i] - 1].tolist(), float(total[i]), float(total[i])) for i in range(B)]
    if attention is not None:
        for i, h in enumerate(hyps):
            h.attention = attention[i, : lengths[i], :, : src_lengths[i]].cpu()
    return hyps


@torch.inference_mode()
def beam_search(
    model: Searchable,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    *,
    beam_size: int,
    length_penalty_alpha: float,
    max_len_a: float,
    max_len_b: int,
    n_best: int = 1,
    need_attention: bool = False,
) -> list[list[Hypothesis]]:
    """src (B, S) -> for each sentence, its `n_best` hypotheses, best first."""
    k, B, device = beam_size, src.size(0), src.device
    if n_best > k:
        raise ValueError(f"n_best ({n_best}) cannot exceed the beam size ({k})")
    memory, state = model.encode(src, src_lengths)
    tile = torch.arange(B, device=device).repeat_interleave(k)  # (B*k,)
    memory, state = model.reorder(memory, tile), model.reorder(state, tile)

    limits = max_lengths(src_lengths, max_len_a, max_len_b).to(device)
    sent = torch.arange(B, device=device)  # original index of each active sentence
    scores = torch.full((B, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start, so the k beams do not repeat each other
    history = torch.full((B * k, 1), BOS, dtype=torch.long, device=device)
    attention = None  # (nb*k, t, H, S): each live beam's attention so far, when asked for
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]

    t = 0
    while sent.numel():
        nb = sent.numel()
        if need_attention:
            log_probs, state, weights = model.decode_step(history[:, -1], state, memory, need_attention=True)
            attention = weights.unsqueeze(1) if attention is None else torch.cat([attention, weights.unsqueeze(1)], 1)
        else:
            log_probs, state = model.decode_step(history[:, -1], state, memory)  # (nb*k, V)
        V = log_probs.size(-1)
        log_probs = _mask_specials(log_probs, (limits[sent] <= t).repeat_interleave(k))
        candidates = (scores.view(-1, 1) + log_probs).view(nb, k * V)
        top_scores, top_idx = candidates.topk(min(2 * k, k * V), dim=1)  # (nb, 2k), best first
        top_beam, top_tok = top_idx // V, top_idx % V
        is_eos = top_tok == EOS

        # an EOS candidate among the k best finishes a hypothesis
        ended = is_eos[:, :k] & torch.isfinite(top_scores[:, :k])
        for i, j in ended.nonzero().tolist():
            s = sent[i].item()
            row = i * k + top_beam[i, j].item()
            raw = top_scores[i, j].item()
            hyp = Hypothesis(history[row, 1:].tolist(), raw / length_penalty(t + 1, length_penalty_alpha), raw)
            if attention is not None:
                hyp.attention = attention[row, :, :, : src_lengths[s]].cpu()
            finished[s].append(hyp)

        # the k best candidates that do not end continue
        scores, pick = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # (nb, k)
        rows = (torch.arange(nb, device=device).unsqueeze(1) * k + top_beam.gather(1, pick)).view(-1)
        history = torch.cat([history[rows], top_tok.gather(1, pick).view(-1, 1)], dim=1)
        state = model.reorder(state, rows)
        if attention is not None:
            attention = attention[rows]
        t += 1

        done = torch.tensor([len(finished[s]) >= k for s in sent.tolist()], device=device)
        done |= limits[sent] < t  # EOS was forced on the last step
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            keep_rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            sent, scores, history = sent[keep], scores[keep], history[keep_rows]
            state, memory = model.reorder(state, keep_rows), model.reorder(memory, keep_rows)
            if attention is not None:
                attention = attention[keep_rows]

    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]
