"""bf16 autocast, the training default wherever the hardware does bf16 fast: it must
compute what fp32 computes (to bf16 accuracy), learn, and keep fp32 weights and
checkpoints. On a CPU without fast bf16 it still runs, slowly, so it is tested here."""

from __future__ import annotations

import json
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
from translate.precision import choose_precision, choose_threads, probe, probe_threads
from translate.schedule import lr_at
from translate.training import Progress, Validation

from .conftest import reversal_pairs, reversal_tokenizer, tiny_model

CPU = torch.device("cpu")


def test_precision_auto_is_chosen_by_a_timed_probe_and_cached(tmp_path, caplog):
    model = tiny_model(40)
    calls: list[int] = []

    def fake(figures):
        return lambda m, device, batch_tokens: calls.append(batch_tokens) or figures

    cache = tmp_path / "probe.json"
    faster = choose_precision("auto", CPU, model, cache=cache, measure=fake({"fp32": 1.0, "bf16": 0.5}), supported=True)
    assert faster.precision == "bf16" and "1000 ms in fp32, 500 ms in bf16" in faster.reason and calls == [1500]
    again = choose_precision("auto", CPU, model, cache=cache, measure=fake({"fp32": 1.0, "bf16": 9.0}), supported=True)
    assert again.precision == "bf16" and calls == [1500] and "cached in" in again.reason  # the cache answered
    slower = choose_precision("auto", CPU, model, batch_tokens=3000, cache=cache,
                              measure=fake({"fp32": 1.0, "bf16": 0.95}), supported=True)  # fmt: skip
    assert slower.precision == "fp32" and calls == [1500, 3000]  # not clearly faster: fp32
    assert len(json.loads(cache.read_text())) == 2  # one entry per machine, model shape and batch size
    none = choose_precision("auto", CPU, model, measure=fake({"fp32": 1.0, "bf16": 0.1}), supported=False)
    assert none.precision == "fp32" and "no bf16" in none.reason and calls == [1500, 3000]  # no probe at all
    assert choose_precision("fp32", CPU, model, supported=True).precision == "fp32"
    with caplog.at_level(logging.WARNING):
        assert choose_precision("bf16", CPU, model, supported=False).precision == "bf16"  # asked for: honoured
    assert any("no bf16 arithmetic" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="auto, bf16, fp32"):
        choose_precision("fp16", CPU, model)


def test_threads_are_chosen_by_a_timed_probe_where_there_is_a_choice(tmp_path):
    model = tiny_model(40)
    default = torch.get_num_threads()
    calls: list[list[int]] = []

    def fake(figures):
        return lambda m, candidates, batch_tokens: calls.append(candidates) or figures

    cache = tmp_path / "probe.json"
    more = default + 2  # a machine with hyperthreads: more usable cores than torch's default
    faster = choose_threads(None, model, cache=cache, cores=more, measure=fake({str(default): 1.0, str(more): 0.8}))
    assert faster.threads == more and calls == [[default, more]] and "800 ms on" in faster.reason
    again = choose_threads(None, model, cache=cache, cores=more, measure=fake({str(default): 0.1, str(more): 0.8}))
    assert again.threads == more and len(calls) == 1 and "cached in" in again.reason
    slower = choose_threads(
        None, model, batch_tokens=999, cores=more, measure=fake({str(default): 0.5, str(more): 0.8})
    )
    assert slower.threads == default and len(calls) == 2  # hyperthreads slower here: torch's default
    same = choose_threads(None, model, cores=default, measure=fake({}))
    assert same.threads == default and "nothing to time" in same.reason and len(calls) == 2  # no probe
    assert choose_threads(3, model, measure=fake({})).threads == 3 and len(calls) == 2  # asked for


def test_the_threads_probe_times_each_count_and_puts_the_setting_back():
    model = tiny_model(40)
    before = torch.get_num_threads()
    figures = probe_threads(model, [1, before], batch_tokens=200)
    assert set(figures) == {"1", str(before)} and all(0 < t < 10 for t in figures.values())
    assert torch.get_num_threads() == before


def test_the_probe_times_both_precisions_and_leaves_the_model_and_random_state_alone():
    model = tiny_model(40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    figures = probe(model, CPU, batch_tokens=200, reps=1)
    assert set(figures) == {"fp32", "bf16"} and all(v > 0 for v in figures.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


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
