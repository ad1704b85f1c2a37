"""GRU decoders with attention, in two variants behind one interface.

``input_feed`` (Bahdanau et al. 2015, sec. 3.1): at step t the previous state queries the
annotations, and the context enters the recurrence:

    c_t = attn(s_{t-1});  s_t = GRU([E y_{t-1}; c_t], s_{t-1});  o_t = tanh(W_c [s_t; c_t])

Training runs this one step at a time.

``fused`` (Luong et al. 2015; Wu et al. 2016): the recurrence reads only the target
embeddings, so during training it runs over the whole target in one ``nn.GRU`` call,
and attention is computed for all positions at once:

    s_{1..T} = GRU(E y_{0..T-1});  c_t = attn(s_t);  o_t = tanh(W_c [s_t; c_t])

Both produce logits = W_o dropout(o_t), where o_t has the embedding width so that W_o
can be tied to the target embedding (Press & Wolf 2017). At inference both advance one
step per call of :meth:`Decoder.step`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from translate.attention import Attention, Memory
from translate.dropout import Dropout
from translate.gru import gru, use_training_gru


@dataclass
class DecoderState:
    hidden: torch.Tensor  # (L, B, H)

    def index_select(self, index: torch.Tensor) -> DecoderState:
        return DecoderState(self.hidden.index_select(1, index))


class Decoder(nn.Module):
    """What both variants share: the bridge from the encoder, the combine and output layers.

    A variant gives ``features`` (teacher-forced, whole target) and ``attend_step`` (one
    step at inference)."""

    def __init__(
        self,
        embed: nn.Embedding,
        attention: Attention,
        *,
        enc_dim: int,
        hidden: int,
        layers: int,
        dropout: float,
        tie_output: bool,
        rnn_input: int,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.attention = attention
        self.layers, self.hidden = layers, hidden
        emb_dim, vocab = embed.embedding_dim, embed.num_embeddings
        self.rnn = nn.GRU(
            rnn_input, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.bridge = nn.Linear(enc_dim, layers * hidden)
        self.combine = nn.Linear(hidden + attention.context_dim, emb_dim, bias=False)
        self.dropout = Dropout(dropout)
        self.output = nn.Linear(emb_dim, vocab, bias=False)
        if tie_output:
            self.output.weight = embed.weight

    def init_state(self, final: torch.Tensor) -> DecoderState:
        """final (B, enc_dim) encoder summary -> initial state (L, B, H)."""
        h = torch.tanh(self.bridge(final)).view(final.size(0), self.layers, self.hidden)
        return DecoderState(h.transpose(0, 1).contiguous())

    def forward(self, tgt_in: torch.Tensor, state: DecoderState, memory: Memory) -> torch.Tensor:
        """Teacher-forced pass: tgt_in (B, T) -> logits (B, T, V)."""
        return self.output(self.features(tgt_in, state, memory))

    def features(self, tgt_in: torch.Tensor, state: DecoderState, memory: Memory) -> torch.Tensor:
        """Teacher-forced pass up to the output layer: tgt_in (B, T) -> (B, T, E), after dropout."""
        raise NotImplementedError

    def attend_step(
        self, emb: torch.Tensor, state: DecoderState, memory: Memory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """emb (B, 1, E) -> attentional output (B, 1, E), next state, attention weights (B, H, 1, S).
        The memory may hold one row per sentence for g adjacent rows each (beams): see _attend."""
        raise NotImplementedError

    def step(
        self, tokens: torch.Tensor, state: DecoderState, memory: Memory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """tokens (B,) previous outputs -> logits (B, V), next state, the step's attention (B, H, S)."""
        out, state, weights = self.attend_step(self.embed(tokens).unsqueeze(1), state, memory)
        return self.output(out).squeeze(1), state, weights.squeeze(2)

    def _attend(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """query (R, 1, Dq) -> context (R, 1, C), weights (R, H, 1, S), for R = n x g rows over
        a memory of n sentences: each sentence's g rows (its beams, adjacent) share its memory
        and query it as g positions of one sentence, so the memory is never repeated per beam."""
        n = memory.keys.size(0)
        if query.size(0) == n:
            return self.attention(query, memory)
        g = query.size(0) // n
        context, weights = self.attention(query.view(n, g, -1), memory)  # (n, g, C), (n, H, g, S)
        return context.reshape(n * g, 1, -1), weights.transpose(1, 2).reshape(n * g, weights.size(1), 1, -1)

    def _attentional(self, s: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """o = tanh(W_c [s; c]): (B, T, H), (B, T, C) -> (B, T, E)."""
        return torch.tanh(self.combine(torch.cat([s, context], dim=-1)))


class FusedDecoder(Decoder):
    """Luong et al. 2015 / GNMT: the recurrence reads only the embeddings (one nn.GRU call in training)."""

    def __init__(self, embed: nn.Embedding, attention: Attention, **sizes) -> None:
        super().__init__(embed, attention, rnn_input=embed.embedding_dim, **sizes)

    def features(self, tgt_in: torch.Tensor, state: DecoderState, memory: Memory) -> torch.Tensor:
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E)
        if use_training_gru(self.rnn):
            states, _ = gru(self.rnn, emb, state.hidden)  # (B, T, H)
        else:
            states, _ = self.rnn(emb, state.hidden)  # (B, T, H), one fused call
        context, _ = self.attention(states, memory)  # (B, T, C)
        return self.dropout(self._attentional(states, context))

    def attend_step(self, emb: torch.Tensor, state: DecoderState, memory: Memory):
        s, hidden = self.rnn(emb, state.hidden)
        context, weights = self._attend(s, memory)
        return self._attentional(s, context), DecoderState(hidden), weights


class InputFeedDecoder(Decoder):
    """Bahdanau et al. 2015: the previous state queries the annotations; the context enters the GRU."""

    def __init__(self, embed: nn.Embedding, attention: Attention, **sizes) -> None:
        super().__init__(embed, attention, rnn_input=embed.embedding_dim + attention.context_dim, **sizes)

    def features(self, tgt_in: torch.Tensor, state: DecoderState, memory: Memory) -> torch.Tensor:
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E)
        outs = []
        for t in range(tgt_in.size(1)):
            o, state, _ = self.attend_step(emb[:, t : t + 1], state, memory)
            outs.append(o)
        return self.dropout(torch.cat(outs, dim=1))

    def attend_step(self, emb: torch.Tensor, state: DecoderState, memory: Memory):
        context, weights = self._attend(state.hidden[-1].unsqueeze(1), memory)  # query s_{t-1}: (B, 1, C)
        s, hidden = self.rnn(torch.cat([emb, context], dim=-1), state.hidden)  # (B, 1, H)
        return self._attentional(s, context), DecoderState(hidden), weights


# model.decoder -> its class; the config checks choices against these keys
VARIANTS: dict[str, type[Decoder]] = {"fused": FusedDecoder, "input_feed": InputFeedDecoder}


def make_decoder(variant: str, embed: nn.Embedding, attention: Attention, **sizes) -> Decoder:
    """`variant` is one of VARIANTS (ModelConfig checks it); sizes: enc_dim, hidden, layers, dropout, tie_output."""
    return VARIANTS[variant](embed, attention, **sizes)
