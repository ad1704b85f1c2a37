"""bf16 autocast, the training default wherever the hardware does bf16 fast: it must
compute what fp32 computes (to bf16 accuracy), learn, and keep fp32 weights and
checkpoints. On a CPU without fast bf16 it still runs, slowly, so it is tested here."""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from functools import partial

import pytest
import torch

from translate.batching import make_batch
from translate.checkpoint import RunFolder, load_checkpoint
from translate.config import ConfigError, DecodeConfig, TrainConfig
from translate.data import Split
from translate.evaluation import evaluate, validation_batches
from translate.learner import Learner
from translate.precision import (
    bf16_supported,
    choose_decode_precision,
    choose_precision,
    choose_threads,
    decoding_precision,
    probe,
    probe_decoding,
    probe_threads,
    step_seconds,
)
from translate.schedule import lr_at
from translate.training import Progress, Validation
from translate.translator import Translator

from .conftest import reversal_pairs, reversal_tokenizer, run_cli, tiny_model

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


def test_a_probe_cached_on_a_cpu_of_the_same_name_with_other_isa_extensions_is_not_reused(tmp_path, monkeypatch):
    """Cloud CPUs share a model name ("Intel(R) Xeon(R) Processor") across kinds with and without
    bf16 arithmetic: a data folder carried from one to the other must not carry its choice."""
    import translate.precision as precision

    model, calls = tiny_model(40), []

    def fake(figures):
        return lambda m, device, batch_tokens: calls.append(figures) or figures

    cache = tmp_path / "probe.json"
    monkeypatch.setattr(precision, "cpu_name", lambda: "Intel(R) Xeon(R) Processor")
    monkeypatch.setattr(precision, "cpu_features", lambda: ["avx2", "avx512f", "avx512_bf16", "amx_bf16"])
    amx = choose_precision("auto", CPU, model, cache=cache, measure=fake({"fp32": 0.29, "bf16": 0.17}), supported=True)
    assert amx.precision == "bf16"
    monkeypatch.setattr(precision, "cpu_features", lambda: ["avx2", "avx512f", "avx512_vnni"])
    plain = choose_precision(
        "auto", CPU, model, cache=cache, measure=fake({"fp32": 0.47, "bf16": 1.23}), supported=True
    )
    assert plain.precision == "fp32" and "measured now" in plain.reason and len(calls) == 2  # probed again
    assert len(json.loads(cache.read_text())) == 2  # both machines' figures kept
    monkeypatch.setattr(precision, "cpu_features", lambda: ["avx2", "avx512f", "avx512_bf16", "amx_bf16"])
    back = choose_precision("auto", CPU, model, cache=cache, measure=fake({"fp32": 1.0, "bf16": 9.0}), supported=True)
    assert back.precision == "bf16" and "cached in" in back.reason and len(calls) == 2


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


def test_the_step_a_dropout_waits_on_is_timed_once_or_read_from_the_precision_probe(tmp_path):
    cache = tmp_path / "probe.json"
    model, calls = tiny_model(40, dropout=0.6), []

    def fake(m, device, batch_tokens, precision):
        calls.append((batch_tokens, precision))
        return {precision: 0.25}

    seconds, where = step_seconds(model, CPU, "fp32", batch_tokens=1500, cache=cache, measure=fake)
    assert seconds == 0.25 and "measured now" in where and calls == [(1500, "fp32")]
    # the same shape with another dropout rate (the run's own, chosen by this figure): the cache answers
    seconds, where = step_seconds(tiny_model(40, dropout=0.5), CPU, "fp32", cache=cache, measure=fake)
    assert seconds == 0.25 and "cached in" in where and len(calls) == 1
    # where the precision probe ran, its figure for the chosen precision is the step's
    choose_precision("auto", CPU, model, batch_tokens=3000, cache=cache, supported=True,
                     measure=lambda *a: {"fp32": 0.5, "bf16": 0.3})  # fmt: skip
    assert step_seconds(model, CPU, "bf16", batch_tokens=3000, cache=cache, measure=fake)[0] == 0.3
    assert step_seconds(model, CPU, "fp32", batch_tokens=3000, cache=cache, measure=fake)[0] == 0.5
    assert len(calls) == 1
    # another batch size is another step
    assert step_seconds(model, CPU, "fp32", batch_tokens=700, cache=cache, measure=fake)[0] == 0.25
    assert calls[-1] == (700, "fp32")


def test_the_one_precision_probe_times_a_step_and_leaves_the_model_and_random_state_alone():
    model = tiny_model(40, dropout=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    figures = probe(model, CPU, 200, precisions=("fp32",))
    assert list(figures) == ["fp32"] and figures["fp32"] > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_and_its_probe_flush_subnormal_floats_to_zero():
    try:
        torch.set_flush_denormal(False)
        tiny = torch.tensor([1e-39])  # below fp32's smallest normal number (1.2e-38)
        assert float(tiny * 2) > 0
        Learner(tiny_model(40), TrainConfig(precision="fp32"), device=CPU)
        assert float(tiny * 2) == 0  # as zero: no slow subnormal arithmetic in training
        torch.set_flush_denormal(False)
        tiny = torch.tensor([1e-39])
        probe(tiny_model(40), CPU, batch_tokens=200, reps=1)
        assert float(tiny * 2) == 0  # the probe times the step as the learner runs it
    finally:
        torch.set_flush_denormal(False)


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


# ---- decoding precision -----------------------------------------------------------------------


def test_decode_precision_auto_is_chosen_by_a_timed_beam_search_and_cached(tmp_path, caplog):
    model = tiny_model(40).eval()
    calls: list[int] = []

    def fake(figures):
        return lambda m, device, beam: calls.append(beam) or figures

    cache = tmp_path / "probe.json"
    choose = partial(choose_decode_precision, model=model, device=CPU, cache=cache, supported=True)
    faster = choose("auto", beam=5, measure=fake({"fp32": 0.2, "bf16": 0.1}))
    assert faster.precision == "bf16" and "200 ms in fp32, 100 ms in bf16" in faster.reason and calls == [5]
    again = choose("auto", beam=5, measure=fake({"fp32": 0.2, "bf16": 0.9}))
    assert again.precision == "bf16" and calls == [5] and "cached in" in again.reason  # the cache answered
    slower = choose("auto", beam=1, measure=fake({"fp32": 0.2, "bf16": 0.19}))
    assert slower.precision == "fp32" and calls == [5, 1]  # not clearly faster (another beam: another probe)
    assert len(json.loads(cache.read_text())) == 2
    none = choose("auto", beam=5, measure=fake({"fp32": 1.0, "bf16": 0.1}), supported=False, cache=None)
    assert none.precision == "fp32" and "no bf16" in none.reason and len(calls) == 2  # no probe at all
    assert choose("fp32", beam=5, measure=fake({})).precision == "fp32" and len(calls) == 2
    with caplog.at_level(logging.WARNING):
        assert choose("bf16", beam=5, supported=False).precision == "bf16"  # asked for: honoured, with a warning
    assert any("no bf16 arithmetic" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="decode.precision='fp16'.*auto, bf16, fp32"):
        choose("fp16", beam=5)


def test_bf16_decoding_keeps_fp32_results_and_puts_the_cpu_setting_back():
    model = tiny_model(40, emb_dim=64, enc_hidden=64, dec_hidden=64, attn_dim=64).eval()
    batch = make_batch([[5, 6, 7, 8, 9], [10, 11, 12]])
    flag = torch.backends.mkldnn.matmul
    before = flag.fp32_precision

    def first_step(precision):
        with torch.no_grad(), decoding_precision(precision, CPU):
            memory, state = model.encode(batch.src, batch.src_lengths)
            return model.decode_step(torch.tensor([1, 1]), state, memory)[0], flag.fp32_precision

    fp32, inside_fp32 = first_step("fp32")
    bf16, inside_bf16 = first_step("bf16")
    assert inside_fp32 == before and inside_bf16 == "bf16" and flag.fp32_precision == before
    assert bf16.dtype == torch.float32  # products in bf16, results in fp32: no autocast
    assert torch.allclose(bf16.exp(), fp32.exp(), atol=0.02)  # bf16 accuracy
    with pytest.raises(RuntimeError, match="boom"), decoding_precision("bf16", CPU):
        raise RuntimeError("boom")
    assert flag.fp32_precision == before  # put back after an error too


def test_the_decoding_probe_times_both_precisions_and_leaves_the_setting_alone():
    model = tiny_model(40).eval()
    before = torch.backends.mkldnn.matmul.fp32_precision
    figures = probe_decoding(model, CPU, beam=3, reps=1)
    assert set(figures) == {"fp32", "bf16"} and all(0 < v < 10 for v in figures.values())
    assert torch.backends.mkldnn.matmul.fp32_precision == before


def test_the_translator_searches_in_the_precision_it_chose(monkeypatch):
    tokenizer = reversal_tokenizer()
    outside = torch.backends.mkldnn.matmul.fp32_precision
    for precision, inside in (("bf16", "bf16"), ("fp32", outside)):
        cfg = DecodeConfig(beam_size=2, precision=precision)
        translator = Translator(tiny_model(tokenizer.vocab_size), tokenizer, cfg)
        seen: list[str] = []

        def spy(*args, step=translator.model.decode_step, seen=seen, **kwargs):
            seen.append(torch.backends.mkldnn.matmul.fp32_precision)
            return step(*args, **kwargs)

        monkeypatch.setattr(translator.model, "decode_step", spy)
        assert translator.precision == precision
        out = list(translator.translate_lines(["a b c", "", "d e"]))
        assert len(out) == 3 and out[1] == ""
        assert seen and set(seen) == {inside}
        assert torch.backends.mkldnn.matmul.fp32_precision == outside  # not left on between searches


@pytest.mark.slow
def test_bf16_decoding_translates_like_fp32_from_the_command_line_and_caches_its_choice(reversal_run, tmp_path):
    ckpt = str(reversal_run / "run" / "best.pt")
    src = [s for s, _ in reversal_pairs(120, seed=7)]
    fp32 = list(Translator.from_checkpoint(ckpt, DecodeConfig(beam_size=3)).translate_lines(src))
    bf16 = Translator.from_checkpoint(ckpt, DecodeConfig(beam_size=3, precision="bf16"))
    together = list(bf16.translate_lines(src))
    agreement = sum(a == b for a, b in zip(together, fp32)) / len(src)
    assert agreement >= 0.9, f"bf16 and fp32 agree on {agreement:.2f} of the lines"

    cache = tmp_path / "cache"
    probed = bf16_supported(torch.device("cpu"))  # an AVX2-only CPU: auto settles on fp32 without a probe
    for _ in range(2):  # the second run reads the probe's figures from the user's cache
        result = run_cli("translate", "--model", ckpt, "--beam", "3", "--precision", "auto", cwd=reversal_run,
                         input=b"a b c\n\nd e\n", env={"XDG_CACHE_HOME": str(cache)})  # fmt: skip
        said = result.stderr.decode()
        assert result.returncode == 0, said
        assert len(result.stdout.decode().split("\n")) == 4 and result.stdout.decode().split("\n")[1] == ""
        if probed:
            assert "decoding in " in said and "timed probe" in said
        else:
            assert "decoding in fp32 (decode.precision=auto: this cpu has no bf16 arithmetic)" in said
    if probed:
        assert "cached in" in said
        assert "decoding 32 sentences, beam 3" in (cache / "translate" / "precision_probe.json").read_text()
    else:
        assert not (cache / "translate" / "precision_probe.json").exists()
