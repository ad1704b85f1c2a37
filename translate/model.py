"""The attention encoder-decoder and the contract search uses to drive it.

Search reaches the model only through three calls (as fairseq's sequence generator
does):

    memory, state = model.encode(src, src_lengths)
    log_probs, state = model.decode_step(prev_tokens, state, memory)
    state = model.reorder(state, index)        # also memory, for beam tiling / pruning

The state may hold g adjacent rows per sentence (its beams) while the memory holds one:
``decode_step`` lets each sentence's rows share its memory (translate/decoder.py).

``decode_step(..., need_attention=True)`` also returns the step's attention weights
(B, H, S): what each head of the step attended to (H = 1 but for multi-head). The
weights are computed in any case, so asking costs nothing in the model.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from translate.attention import Memory, make_attention
from translate.batching import Batch, make_batch
from translate.config import ModelConfig
from translate.decoder import DecoderState, make_decoder
from translate.encoder import Encoder
from translate.loss import output_layer_loss
from translate.tokenizer import PAD

Reorderable = TypeVar("Reorderable", Memory, DecoderState)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self._warmed_up = ""  # "", "forward" or "backward": see warm_up
        tgt_embed = nn.Embedding(vocab_size, cfg.emb_size, padding_idx=PAD)
        src_embed = tgt_embed if cfg.share_embeddings else nn.Embedding(vocab_size, cfg.emb_size, padding_idx=PAD)
        self.encoder = Encoder(
            src_embed,
            hidden=cfg.enc_hidden,
            layers=cfg.enc_layers,
            dropout=cfg.dropout_rate,
            self_attention=cfg.encoder_self_attention,
            heads=cfg.heads,
            annotation_dropout=cfg.annotation_dropout,
        )
        attention = make_attention(
            cfg.attention,
            query_dim=cfg.dec_hidden,
            key_dim=self.encoder.out_dim,
            attn_dim=cfg.attn_dim,
            heads=cfg.heads,
        )
        self.decoder = make_decoder(
            cfg.decoder,
            tgt_embed,
            attention,
            enc_dim=self.encoder.out_dim,
            hidden=cfg.dec_hidden,
            layers=cfg.dec_layers,
            dropout=cfg.dropout_rate,
            tie_output=cfg.tie_output,
        )
        self.init_weights()

    def init_weights(self) -> None:
        for name, p in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(p, std=p.size(-1) ** -0.5)
                with torch.no_grad():
                    p[PAD].zero_()
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("norm.weight"):
                nn.init.ones_(p)  # a layer norm starts as the identity
            else:
                nn.init.zeros_(p)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[Memory, DecoderState]:
        """src (B, S), src_lengths (B,) -> attention memory, initial decoder state."""
        annotations, final = self.encoder(src, src_lengths)
        mask = torch.arange(src.size(1), device=src.device)[None, :] < src_lengths.to(src.device)[:, None]
        return self.decoder.attention.precompute(annotations, mask), self.decoder.init_state(final)

    def decode_step(self, tokens: torch.Tensor, state: DecoderState, memory: Memory, *, need_attention: bool = False):
        """tokens (B,) -> log-probabilities (B, V) in fp32, next state; with `need_attention`,
        also the step's attention weights (B, H, S) in fp32."""
        logits, state, weights = self.decoder.step(tokens, state, memory)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        return (log_probs, state, weights.float()) if need_attention else (log_probs, state)

    def warm_up(self, *, backward: bool = False, context: AbstractContextManager | None = None,
                products: torch.dtype = torch.float32) -> None:  # fmt: skip
        """Spend this process's first call of the model's kernels on throwaway data: a
        two-sentence batch through the encoder and one decoding step (inference's ``nn.GRU``),
        and with `backward` also a training step's forward and backward on a copy (training's
        recurrence, translate/gru.py), under `context` (the precision's autocast or decoding
        setting) with the output layer's `products`, the random state put back.
        Once per model: a model warmed already (the learner's, when validation decodes with
        it) is left alone.

        On an Intel Xeon with 2 threads (2026-12-06), the first call of ``nn.GRU`` in a
        process took another code path in about 1 process in 5 and rounded differently, so
        identical trainings ended with different weights and a resumed run did not reproduce
        the uninterrupted one (README, "Resume")."""
        run_backward = backward and self._warmed_up != "backward"
        if self._warmed_up and not run_backward:
            return
        device = next(self.parameters()).device  # (an int8 decoder has no output_weight)
        ids = [min(4 + i, self.vocab_size - 1) for i in range(3)]
        batch = make_batch([ids, ids[:2]], [ids[:2], ids]).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), context or nullcontext():
            if run_backward:  # training's recurrences (translate/gru.py), on a copy
                net = copy.deepcopy(self).train()
                net.loss(batch, features=net.features(batch), products=products)[0].backward()
            if not self._warmed_up:  # inference's (nn.GRU): validation decodes with this model
                with torch.inference_mode():
                    memory, state = self.encode(batch.src, batch.src_lengths)
                    self.decode_step(batch.tgt_in[:, 0], state, memory)
        self._warmed_up = "backward" if backward else "forward"

    @staticmethod
    def reorder(x: Reorderable, index: torch.Tensor) -> Reorderable:
        """Select (and repeat) batch rows of a state or memory: x[index]."""
        return x.index_select(index)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for batch.tgt_in."""
        return self.decoder.output(self.features(batch))

    def features(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced pre-output states (B, T, E); logits = features @ output_weight.T."""
        memory, state = self.encode(batch.src, batch.src_lengths)
        return self.decoder.features(batch.tgt_in, state, memory)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.decoder.output.weight

    def loss(
        self,
        batch: Batch,
        *,
        label_smoothing: float = 0.0,
        features: torch.Tensor | None = None,
        products: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(label-smoothed loss, nll), summed over the batch's target tokens, in fp32.

        `features` (B, T, E) when already computed (under DDP they come from the wrapper);
        `products`: the output layer's matrix products in fp32 or, under bf16 autocast, bf16."""
        if features is None:
            features = self.features(batch)
        return output_layer_loss(features, self.output_weight, batch.tgt_out, label_smoothing, products=products)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared weights counted once
