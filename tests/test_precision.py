"""bf16 autocast, the training default wherever the hardware does bf16 fast: it must
compute what fp32 computes (to bf16 accuracy), learn, and keep fp32 weights and
checkpoints. On a CPU without fast bf16 it still runs, slowly, so it is tested here."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import pytest
import torch

from translate.batching import make_batch
from translate.checkpoint import RunFolder, load_checkpoint
from translate.config import ConfigError, DecodeConfig, TrainConfig
from translate.data import Split
from translate.evaluation import evaluate, validation_batches
from translate.learner import Learner
from translate.precision import resolve_precision
from translate.schedule import lr_at
from translate.training import Progress, Validation

from .conftest import reversal_pairs, reversal_tokenizer, tiny_model

CPU = torch.device("cpu")


def test_precision_auto_follows_the_hardware_and_bad_names_are_refused(caplog):
    fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert resolve_precision("auto", CPU) == ("bf16" if fast else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("bf16", CPU) == "bf16"  # asked for: honoured, with a warning where it is slow
    assert any("no fast bf16" in r.getMessage() for r in caplog.records) == (not fast)
    with pytest.raises(ConfigError, match="auto, bf16, fp32"):
        resolve_precision("fp16", CPU)


def loss_of(learner: Learner, batch, autocast: bool = True) -> float:
    with torch.no_grad():
        with learner.autocast() if autocast else nullcontext():
            features = learner.model.eval().features(batch)
        return float(learner.model.loss(batch, features=features)[1]) / batch.ntokens


def test_bf16_autocast_trains_like_fp32_and_keeps_fp32_weights(tmp_path):
    pairs = reversal_pairs(64, 31)
    tokenizer = reversal_tokenizer(64, 31)
    model = tiny_model(tokenizer.vocab_size, emb_dim=32, enc_hidden=32, dec_hidden=32, attn_dim=32)
    cfg = TrainConfig(precision="bf16", lr=5e-3, warmup_steps=5, max_steps=60, valid_beam=2)
    learner = Learner(model, cfg, device=CPU)
    src, tgt = tokenizer.encode([p[0] for p in pairs]), tokenizer.encode([p[1] for p in pairs])
    batches = [make_batch(src[i : i + 16], tgt[i : i + 16]) for i in range(0, len(pairs), 16)]
    with torch.no_grad(), learner.autocast():
        assert model.eval().features(batches[0]).dtype == torch.bfloat16  # autocast is really on

    before = loss_of(learner, batches[0])
    for step in range(60):
        assert learner.step(batches[step % len(batches)], lr_at(cfg, step + 1, step / 60)).finite
    assert loss_of(learner, batches[0]) < 0.8 * before
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    # the trained weights give the same loss under autocast as in fp32, to bf16 accuracy
    for batch in batches:
        assert loss_of(learner, batch) == pytest.approx(loss_of(learner, batch, autocast=False), rel=0.005)

    # validation decodes under autocast, scores as fp32 does (to bf16 accuracy) and saves fp32 checkpoints
    valid = Split(*map(list, zip(*reversal_pairs(8, 32))))
    with RunFolder.open(tmp_path, {"name": "bf16"}) as run:
        Validation(learner, tokenizer, valid, cfg=cfg, run=run)(Progress(step=60), final=True)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["step"] == 60
    assert all(t.dtype == torch.float32 for t in saved["model"].values() if t.is_floating_point())
    fp32, _ = evaluate(
        model,
        tokenizer,
        valid.src,
        valid.tgt,
        batches=validation_batches(tokenizer, valid.src, valid.tgt, batch_tokens=1500, device=CPU),
        search=DecodeConfig(beam_size=2),
    )
    assert saved["metrics"]["valid_loss"] == pytest.approx(fp32["valid_loss"], rel=0.01)
