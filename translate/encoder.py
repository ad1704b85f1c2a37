"""Bidirectional GRU encoder (Bahdanau et al. 2015, sec. 3.2) over packed sequences,
optionally followed by one multi-head self-attention layer over its annotations
(Vaswani et al. 2017, sec. 3.2.2; residual connection and layer norm, sec. 3.1), which
lets every annotation read the whole sentence directly (``model.encoder_self_attention``).
Dropout on what the encoder hands the decoder (its annotations and final state,
``model.annotation_dropout``) is nmtpytorch's ``dropout_ctx`` (Caglayan et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from translate.dropout import Dropout
from translate.gru import gru, use_training_gru


class Encoder(nn.Module):
    """Embeds source ids and runs a bi-GRU over the real (unpadded) positions only.

    Packing means a sentence's annotations do not depend on how much padding its batch
    adds, which is what makes a translation independent of the batch it is in.
    """

    def __init__(
        self,
        embed: nn.Embedding,
        *,
        hidden: int,
        layers: int,
        dropout: float,
        self_attention: bool = False,
        heads: int = 4,
        annotation_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.dropout = Dropout(dropout)
        self.annotation_dropout = Dropout(annotation_dropout)
        self.rnn = nn.GRU(
            embed.embedding_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.out_dim = 2 * hidden
        if self_attention:
            self.self_attention = nn.MultiheadAttention(self.out_dim, heads, dropout=dropout, batch_first=True)
            self.norm = nn.LayerNorm(self.out_dim)
        else:
            self.self_attention = None

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S), src_lengths (B,) -> annotations (B, S, 2H), final (B, 2H).

        `final` joins the last layer's forward state at the last real token and its
        backward state at the first token.
        """
        x = self.dropout(self.embed(src))  # (B, S, E)
        if use_training_gru(self.rnn):
            annotations, h = gru(self.rnn, x, lengths=src_lengths)  # h (2L, B, H)
        else:
            packed = pack_padded_sequence(x, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, h = self.rnn(packed)  # h (2L, B, H)
            annotations, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        if self.self_attention is not None:
            padding = torch.arange(src.size(1), device=src.device)[None, :] >= src_lengths.to(src.device)[:, None]
            mixed, _ = self.self_attention(annotations, annotations, annotations, key_padding_mask=padding,
                                           need_weights=False)  # fmt: skip
            annotations = self.norm(annotations + self.dropout(mixed)).masked_fill(padding.unsqueeze(-1), 0.0)
        final = torch.cat([h[-2], h[-1]], dim=-1)
        return self.annotation_dropout(annotations), self.annotation_dropout(final)
