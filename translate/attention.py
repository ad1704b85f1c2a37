"""Attention over encoder annotations, with selectable score functions.

For a decoder query q (B, T, Dq) and annotations h_1..h_S (B, S, Dk):

    additive / bahdanau  (Bahdanau et al. 2015, eq. 6):  score = v^T tanh(W_q q + W_k h)
    dot                  (Luong et al. 2015, sec. 3.1):   score = q^T h          (needs Dq == Dk)
    general              (Luong et al. 2015, sec. 3.1):   score = q^T W h
    scaled_dot           (Vaswani et al. 2017, sec. 3.2.1): score = (W_q q)^T (W_k h) / sqrt(d)
    multihead            (Vaswani et al. 2017, sec. 3.2.2): `heads` scaled-dot heads over
                          values W_v h, concatenated and projected by W_o

    a = softmax(score) over the unpadded source positions; context = sum_s a_s v_s

Everything that depends only on the annotations (W_k h, W_v h) is computed once per
sentence by :meth:`Attention.precompute` and handed back on every call, so beam search
can reorder it like any other state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from translate.config import ConfigError

KINDS = ("bahdanau", "additive", "dot", "general", "scaled_dot", "multihead")


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


class Attention(nn.Module):
    def __init__(self, kind: str, *, query_dim: int, key_dim: int, attn_dim: int, heads: int = 1) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"model.attention must be one of {', '.join(KINDS)}, not '{kind}'")
        self.kind = "bahdanau" if kind == "additive" else kind
        self.heads = heads if kind == "multihead" else 1
        self.context_dim = key_dim
        if self.kind == "bahdanau":
            self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)
            self.query_proj = nn.Linear(query_dim, attn_dim, bias=True)
            self.v = nn.Linear(attn_dim, 1, bias=False)
        elif self.kind == "dot":
            if query_dim != key_dim:
                raise ConfigError(
                    f"dot attention needs equal query and key sizes, got decoder {query_dim} vs annotations "
                    f"{key_dim}: set model.dec_hidden={key_dim} or use model.attention=general"
                )
        elif self.kind == "general":
            self.key_proj = nn.Linear(key_dim, query_dim, bias=False)
        else:  # scaled_dot, multihead
            if attn_dim % self.heads:
                raise ConfigError(f"model.attn_dim={attn_dim} must be divisible by model.heads={self.heads}")
            self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)
            self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)
            if self.kind == "multihead":
                self.value_proj = nn.Linear(key_dim, attn_dim, bias=False)
                self.out_proj = nn.Linear(attn_dim, attn_dim, bias=False)
                self.context_dim = attn_dim

    def precompute(self, annotations: torch.Tensor, mask: torch.Tensor) -> Memory:
        """annotations (B, S, Dk), mask (B, S) -> Memory with projected keys."""
        keys = self.key_proj(annotations) if hasattr(self, "key_proj") else annotations
        values = self.value_proj(annotations) if self.kind == "multihead" else annotations
        return Memory(keys, values, mask)

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, Dq) -> context (B, T, context_dim), weights (B, T, S) (mean over heads)."""
        if self.kind == "multihead":
            return self._multihead(query, memory)
        if self.kind == "bahdanau":
            q = self.query_proj(query)  # (B, T, A)
            scores = self.v(torch.tanh(q.unsqueeze(2) + memory.keys.unsqueeze(1))).squeeze(-1)  # (B, T, S)
        elif self.kind == "scaled_dot":
            q = self.query_proj(query)
            scores = q @ memory.keys.transpose(1, 2) / math.sqrt(q.size(-1))
        else:  # dot, general: keys already in query space
            scores = query @ memory.keys.transpose(1, 2)  # (B, T, S)
        weights = self._softmax(scores, memory.mask.unsqueeze(1))
        return weights @ memory.values, weights

    def _multihead(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = query.shape
        S, H = memory.keys.size(1), self.heads
        split = lambda x, n: x.view(B, n, H, -1).transpose(1, 2)  # (B, H, n, d)  # noqa: E731
        q, k, v = split(self.query_proj(query), T), split(memory.keys, S), split(memory.values, S)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (B, H, T, S)
        weights = self._softmax(scores, memory.mask[:, None, None, :])
        context = (weights @ v).transpose(1, 2).reshape(B, T, -1)  # (B, T, A)
        return self.out_proj(context), weights.mean(1)

    @staticmethod
    def _softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax over source positions in fp32, padding at exactly 0 weight."""
        return F.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1).type_as(scores)
