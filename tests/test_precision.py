"""bf16 autocast, the training default wherever the hardware does bf16 fast: it must
compute what fp32 computes (to bf16 accuracy), learn, and keep fp32 weights and
checkpoints. On a CPU without fast bf16 it still runs, slowly, so it is tested here."""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext

import pytest
import torch

from translate.batching import make_batch
from translate.checkpoint import load_checkpoint
from translate.config import ConfigError, DecodeConfig, ModelConfig, TrainConfig
from translate.data import Split
from translate.loss import output_layer_loss
from translate.model import Seq2Seq
from translate.tokenizer import train_tokenizer
from translate.training import Trainer, resolve_precision

from .conftest import reversal_pairs

CPU = torch.device("cpu")


def test_precision_auto_follows_the_hardware_and_bad_names_are_refused(caplog):
    fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert resolve_precision("auto", CPU) == ("bf16" if fast else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("bf16", CPU) == "bf16"  # asked for: honoured, with a warning where it is slow
    assert any("no fast bf16" in r.getMessage() for r in caplog.records) == (not fast)
    with pytest.raises(ConfigError, match="auto, bf16 or fp32"):
        resolve_precision("fp16", CPU)


def bf16_trainer(tmp_path) -> tuple[Trainer, list]:
    pairs = reversal_pairs(64, 31)
    tokenizer = train_tokenizer([s for pair in pairs for s in pair], vocab_size=60, byte_fallback=False)
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(emb_dim=32, enc_hidden=32, dec_hidden=32, attn_dim=32, dropout=0.0), 60)
    cfg = TrainConfig(precision="bf16", lr=5e-3, warmup_steps=5, max_steps=60, valid_beam=2)
    trainer = Trainer(model, tokenizer, cfg, DecodeConfig(beam_size=2), run_dir=tmp_path, device=CPU, run_config={})
    src, tgt = tokenizer.encode([p[0] for p in pairs]), tokenizer.encode([p[1] for p in pairs])
    batches = [make_batch(src[i : i + 16], tgt[i : i + 16]) for i in range(0, len(pairs), 16)]
    return trainer, batches


def loss_of(trainer: Trainer, batch, autocast: bool = True) -> float:
    with torch.no_grad():
        with trainer.autocast() if autocast else nullcontext():
            features = trainer.model.eval().features(batch)
        return float(output_layer_loss(features, trainer.model.output_weight, batch.tgt_out, 0.0)[1]) / batch.ntokens


def test_bf16_autocast_trains_like_fp32_and_keeps_fp32_weights(tmp_path):
    trainer, batches = bf16_trainer(tmp_path)
    with torch.no_grad(), trainer.autocast():
        assert trainer.model.eval().features(batches[0]).dtype == torch.bfloat16  # autocast is really on

    before = loss_of(trainer, batches[0])
    for step in range(60):
        assert trainer.train_step(batches[step % len(batches)], step / 60) > 0
    assert loss_of(trainer, batches[0]) < 0.8 * before
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.model.parameters())
    # the trained weights give the same loss under autocast as in fp32, to bf16 accuracy
    for batch in batches:
        assert loss_of(trainer, batch) == pytest.approx(loss_of(trainer, batch, autocast=False), rel=0.005)

    # validation decodes under autocast and saves fp32 checkpoints
    valid = reversal_pairs(8, 32)
    metrics = trainer.validate(Split([p[0] for p in valid], [p[1] for p in valid]), final=True)
    assert math.isfinite(metrics["valid_loss"]) and metrics["valid_bleu"] >= 0
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["step"] == 60
    assert all(t.dtype == torch.float32 for t in saved["model"].values() if t.is_floating_point())
