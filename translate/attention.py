"""Attention over encoder annotations: one small class per score function, one table.

For a decoder query q (B, T, Dq) and annotations h_1..h_S (B, S, Dk):

    bahdanau / additive  (Bahdanau et al. 2015, eq. 6):   score = v^T tanh(W_q q + W_k h)
    dot                  (Luong et al. 2015, sec. 3.1):    score = q^T h          (needs Dq == Dk)
    general              (Luong et al. 2015, sec. 3.1):    score = q^T W h
    scaled_dot           (Vaswani et al. 2017, 3.2.1):    score = (W_q q)^T (W_k h) / sqrt(d)
    multihead            (Vaswani et al. 2017, 3.2.2):    `heads` scaled-dot heads over
                          values W_v h, concatenated and projected by W_o
    cosine               (Graves et al. 2014, sec. 3.3.1; Henry et al. 2020):
                          score = g sqrt(d) cos(W_q q, W_k h), g learned (starts at 1)

    a = softmax(score) over the unpadded source positions; context = sum_s a_s v_s

Every score function returns its weights as (B, H, T, S): H = 1 for the single-head
ones, one row per head for multi-head (their mean is what the heads attend to together).

Everything that depends only on the annotations (projected keys, values) is computed
once per sentence by :meth:`Attention.precompute` and handed back on every call as a
:class:`Memory`, so beam search can reorder it like any other state.

A new score function is one subclass of :class:`Attention` (``keys`` and ``scores``,
and ``check`` for size constraints) and one entry in :data:`SCORES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from translate.config import ConfigError


@dataclass
class Memory:
    """Encoder output as attention sees it, for one batch of sentences (or beams)."""

    keys: torch.Tensor  # (B, S, Dk') keys after any key projection
    values: torch.Tensor  # (B, S, Dv) what the weights average
    mask: torch.Tensor  # (B, S) True at real source positions

    def index_select(self, index: torch.Tensor) -> Memory:
        return Memory(
            self.keys.index_select(0, index), self.values.index_select(0, index), self.mask.index_select(0, index)
        )


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis (source positions) in fp32; padding gets exactly 0 weight.

    scores (..., S), mask broadcastable to it, True at real positions."""
    return F.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1).type_as(scores)


class Attention(nn.Module):
    """Score a query against the memory's keys, softmax over the source, average the values.

    Subclasses give ``keys`` (annotations -> keys, once per sentence) and ``scores``."""

    def __init__(self, *, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
        super().__init__()
        self.check(query_dim=query_dim, key_dim=key_dim, attn_dim=attn_dim, heads=heads)
        self.context_dim = key_dim

    @staticmethod
    def check(*, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
        """Raise ConfigError for sizes this score function cannot work with."""

    def keys(self, annotations: torch.Tensor) -> torch.Tensor:
        return annotations

    def values(self, annotations: torch.Tensor) -> torch.Tensor:
        return annotations

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query (B, T, Dq), keys (B, S, Dk') -> scores (B, T, S)."""
        raise NotImplementedError

    def precompute(self, annotations: torch.Tensor, mask: torch.Tensor) -> Memory:
        """annotations (B, S, Dk), mask (B, S) -> Memory with projected keys and values."""
        return Memory(self.keys(annotations), self.values(annotations), mask)

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, Dq) -> context (B, T, context_dim), weights (B, H, T, S) with H = 1."""
        weights = masked_softmax(self.scores(query, memory.keys), memory.mask.unsqueeze(1))
        return weights @ memory.values, weights.unsqueeze(1)


class Additive(Attention):
    """Bahdanau et al. 2015: score = v^T tanh(W_q q + W_k h)."""

    def __init__(self, *, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
        super().__init__(query_dim=query_dim, key_dim=key_dim, attn_dim=attn_dim, heads=heads)
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=True)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, annotations: torch.Tensor) -> torch.Tensor:
        return self.key_proj(annotations)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = self.query_proj(query)  # (B, T, A)
        return self.v(torch.tanh(q.unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)  # (B, T, S)


class Dot(Attention):
    """Luong et al. 2015: score = q^T h."""

    @staticmethod
    def check(*, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
        if query_dim != key_dim:
            raise ConfigError(
                f"model.attention=dot needs equal query and key sizes, got model.dec_hidden={query_dim} vs "
                f"annotations {key_dim} (2 x model.enc_hidden): set model.dec_hidden={key_dim} "
                "or use model.attention=general"
            )

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return query @ keys.transpose(1, 2)  # (B, T, S)


class General(Attention):
    """Luong et al. 2015: score = q^T W h, with W h computed once per sentence."""

    def __init__(self, *, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
        super().__init__(query_dim=query_dim, key_dim=key_dim, attn_dim=attn_dim, heads=heads)
        self.key_proj = nn.Linear(key_dim, query_dim, bias=False)

    def keys(self, annotations: torch.Tensor) -> torch.Tensor:
        return self.key_proj(annotations)  # keys in query space

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return query @ keys.transpose(1, 2)  # (B, T, S)


class ScaledDot(Attention):
    """Vaswani et al. 2017: score = (W_q q)^T (W_k h) / sqrt(d)."""

    def __init__(self, *, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
        super().__init__(query_dim=query_dim, key_dim=key_dim, attn_dim=attn_dim, heads=heads)
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)

    def keys(self, annotations: torch.Tensor) -> torch.Tensor:
        return self.key_proj(annotations)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = self.query_proj(query)
        return q @ keys.transpose(1, 2) / math.sqrt(q.size(-1))


class MultiHead(ScaledDot):
    """Vaswani et al. 2017: `heads` scaled-dot heads over W_v h, joined and projected by W_o.

    The weights returned are each head's, (B, H, T, S)."""

    def __init__(self, *, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
        super().__init__(query_dim=query_dim, key_dim=key_dim, attn_dim=attn_dim, heads=heads)
        self.heads = heads
        self.value_proj = nn.Linear(key_dim, attn_dim, bias=False)
        self.out_proj = nn.Linear(attn_dim, attn_dim, bias=False)
        self.context_dim = attn_dim

    @staticmethod
    def check(*, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
        if attn_dim % heads:
            raise ConfigError(f"model.attn_dim={attn_dim} must be divisible by model.heads={heads}")

    def values(self, annotations: torch.Tensor) -> torch.Tensor:
        return self.value_proj(annotations)

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = query.shape
        S, H = memory.keys.size(1), self.heads
        split = lambda x, n: x.view(B, n, H, -1).transpose(1, 2)  # (B, H, n, d)  # noqa: E731
        q, k, v = split(self.query_proj(query), T), split(memory.keys, S), split(memory.values, S)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (B, H, T, S)
        weights = masked_softmax(scores, memory.mask[:, None, None, :])
        context = (weights @ v).transpose(1, 2).reshape(B, T, -1)  # (B, T, A)
        return self.out_proj(context), weights


class Cosine(ScaledDot):
    """Cosine similarity of projected query and key, times a learned scale g sqrt(d).

    Content addressing in Graves et al. 2014 (sec. 3.3.1) uses the cosine with a sharpening
    factor; Henry et al. 2020 ("Query-Key Normalization") learn that factor. Normalizing
    bounds the scores, so no key can dominate by its length alone. g = exp(log_scale)
    starts at 1 (the model zero-initializes 0-d parameters)."""

    def __init__(self, *, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
        super().__init__(query_dim=query_dim, key_dim=key_dim, attn_dim=attn_dim, heads=heads)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def keys(self, annotations: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_proj(annotations), dim=-1)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.query_proj(query), dim=-1)
        return (self.log_scale.exp() * math.sqrt(q.size(-1))) * (q @ keys.transpose(1, 2))


# model.attention -> its class; the config checks choices against these keys
SCORES: dict[str, type[Attention]] = {
    "bahdanau": Additive,
    "additive": Additive,
    "dot": Dot,
    "general": General,
    "scaled_dot": ScaledDot,
    "multihead": MultiHead,
    "cosine": Cosine,
}


def check_dims(kind: str, *, query_dim: int, key_dim: int, attn_dim: int, heads: int) -> None:
    """Raise ConfigError if score function `kind` cannot work with these sizes."""
    SCORES[kind].check(query_dim=query_dim, key_dim=key_dim, attn_dim=attn_dim, heads=heads)


def make_attention(kind: str, *, query_dim: int, key_dim: int, attn_dim: int, heads: int = 1) -> Attention:
    """`kind` is one of SCORES (ModelConfig checks it, naming the key)."""
    return SCORES[kind](query_dim=query_dim, key_dim=key_dim, attn_dim=attn_dim, heads=heads)
