"""An attention collapse: measured on the validation translations, warned of, and a run that
starts over from fresh weights in the rest of its budget."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from translate.batching import Examples
from translate.checkpoint import RunFolder, load_checkpoint
from translate.config import ConfigError, TrainConfig
from translate.data import Split
from translate.evaluation import eos_attention
from translate.learner import Learner
from translate.training import RESTART_SEED, Validation, fit
from translate.translator import Candidate, Translation

from .conftest import reversal_pairs, reversal_tokenizer, tiny_model


def _translation(*heads: torch.Tensor) -> Translation:
    """A translated sentence whose best hypothesis has these heads' attention, each (T + 1, S + 1)."""
    stacked = torch.stack(heads)
    t = stacked.size(1) - 1
    candidate = Candidate("x", 0.0, ["x"] * t, [], stacked.mean(0), stacked)
    return Translation("src", ["s"] * (stacked.size(2) - 1), [candidate])


def _diagonal(t: int, s: int) -> torch.Tensor:
    """Each target piece looks at one source piece; the step that ends the sentence at EOS."""
    a = torch.zeros(t + 1, s + 1)
    for i in range(t):
        a[i, min(i, s - 1)] = 1.0
    a[t, s] = 1.0
    return a


def _on_eos(t: int, s: int) -> torch.Tensor:
    a = torch.zeros(t + 1, s + 1)
    a[:, s] = 1.0
    return a


def test_the_share_on_the_source_end_tells_an_aligning_attention_from_a_collapsed_one():
    aligning = [_translation(_diagonal(3, 4)), _translation(_diagonal(7, 6))]
    assert eos_attention(aligning) == pytest.approx((1 / 4 + 1 / 8) / 2)  # only the last step looks at EOS
    collapsed = [_translation(_on_eos(3, 4)), _translation(_on_eos(7, 6))]
    assert eos_attention(collapsed) == pytest.approx(1.0)
    half = _diagonal(3, 4) * 0.5 + _on_eos(3, 4) * 0.5
    assert eos_attention([_translation(half)]) == pytest.approx(0.5 * 1 / 4 + 0.5)
    # a sentence without a translation (an empty line) does not count; none at all: 0
    assert eos_attention([*aligning, Translation("", [])]) == pytest.approx(eos_attention(aligning))
    assert eos_attention([]) == 0.0


def test_a_head_that_rests_on_eos_beside_one_that_aligns_is_no_collapse():
    sentences = [_translation(_on_eos(3, 4), _diagonal(3, 4)), _translation(_on_eos(5, 5), _diagonal(5, 5))]
    assert eos_attention(sentences) == pytest.approx((1 / 4 + 1 / 6) / 2)  # the head that aligns
    every_head = [_translation(_on_eos(3, 4), _on_eos(3, 4))]
    assert eos_attention(every_head) == pytest.approx(1.0)


def test_validation_reports_the_share_of_its_own_translations(tmp_path):
    """The figure comes from the validation's decoding: the same as the translations' attention."""
    from translate.translator import Translator

    tokenizer = reversal_tokenizer()
    model = tiny_model(tokenizer.vocab_size)
    pairs = reversal_pairs(6, seed=5)
    valid = Split([s for s, _ in pairs], [t for _, t in pairs])
    cfg = TrainConfig(precision="fp32")
    with RunFolder.open(tmp_path, {}) as run:
        validation = Validation(Learner(model, cfg, device=torch.device("cpu")), tokenizer, valid, cfg=cfg, run=run)
        metrics, _ = validation._score(model)
    translations = Translator(model, tokenizer, validation.search).translate_detailed(valid.src, n_best=1)
    expected = eos_attention(translations)
    assert 0 < expected < 1
    assert metrics["valid_eos_attention"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "override, need",
    [
        ({"on_collapse": "stop"}, "restart, warn"),
        ({"collapse_share": 0.0}, r"\(0, 1\]"),
        ({"collapse_after": 0}, ">= 1"),
    ],
)
def test_collapse_settings_are_checked(override, need):
    with pytest.raises(ConfigError, match=need):
        TrainConfig(**override)


def _train(tmp_path, monkeypatch, share: float, **overrides):
    """Train the tiny model for 12 updates, validating every 4, with validation saying that
    `share` of the attention rests on EOS; returns the progress, the learner, what happened."""
    tokenizer = reversal_tokenizer(50, 12)
    model = tiny_model(tokenizer.vocab_size, emb_dim=8, enc_hidden=8, dec_hidden=8, attn_dim=8)
    settings = dict(precision="fp32", max_steps=12, valid_every=4, collapse_after=4, warmup_steps=4)
    cfg = TrainConfig(**{**settings, "schedule": "constant", "average": 3, "lr": 0.01, **overrides})
    learner = Learner(model, cfg, device=torch.device("cpu"))
    pairs = reversal_pairs(60, 13)
    train = Examples(tokenizer.encode([s for s, _ in pairs]), tokenizer.encode([t for _, t in pairs]))
    seen = {"lr": [], "restarts": [], "snapshots": [], "last": []}
    update, restart, save = Learner.update, Learner.restart, RunFolder.save

    def record_update(self, lr):
        seen["lr"].append(lr)
        update(self, lr)

    def record_restart(self, seed):
        before = copy.deepcopy(self.model)
        restart(self, seed)
        fresh = copy.deepcopy(before)
        torch.manual_seed(seed)
        fresh.init_weights()  # what a new model drawn with that seed holds
        after = {k: v.clone() for k, v in self.model.state_dict().items()}
        seen["restarts"].append((seed, before, after, fresh.state_dict(), len(self.optimizer.state)))

    def fake_score(self, net, *, search=None, exact=False):
        seen["snapshots"].append(self.snapshots.steps())
        return {"valid_loss": 1.0, "valid_ppl": 2.7, "valid_bleu": 10.0, "valid_chrf": 0.0,
                "valid_eos_attention": share}, "sig"  # fmt: skip

    def record_save(self, name, payload):
        if name == "last.pt":
            progress = payload["train_state"]["progress"]
            seen["last"].append((progress["step"], progress["restarts"]))
        save(self, name, payload)

    monkeypatch.setattr(RunFolder, "save", record_save)
    monkeypatch.setattr(Learner, "update", record_update)
    monkeypatch.setattr(Learner, "restart", record_restart)
    monkeypatch.setattr(Validation, "_score", fake_score)
    monkeypatch.setattr(Validation, "_draw_attention", lambda self, step: None)
    with RunFolder.open(tmp_path / "run", {}) as run:
        p = fit(learner, tokenizer, train, Split(["a b"], ["B A"]), cfg=cfg, run=run)
    return p, seen, cfg


def test_a_collapsed_run_starts_over_once_from_fresh_weights(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="translate.training"):
        p, seen, cfg = _train(tmp_path, monkeypatch, share=0.9)
    said = [r.getMessage() for r in caplog.records]
    collapsed = [m for m in said if "attention collapsed" in m]
    assert len(collapsed) == 3  # every judged validation: steps 4, 8, 12
    assert "step 4:" in collapsed[0] and "0.90 of the validation translations' attention" in collapsed[0]
    assert "starting over from fresh weights" in collapsed[0]
    assert "no restart: it started over once already" in collapsed[1]
    assert sum("started over at step 4" in m for m in said) == 1
    # once, at the first judged validation: fresh weights, drawn with another seed, and Adam anew
    assert len(seen["restarts"]) == 1
    seed, before, after, fresh, adam_state = seen["restarts"][0]
    assert seed == cfg.seed + RESTART_SEED
    assert all(torch.equal(after[k], fresh[k]) for k in fresh)
    assert any(not torch.equal(after[k], v) for k, v in before.state_dict().items())
    assert adam_state == 0
    assert (p.step, p.restarts, p.restart_step) == (12, 1, 4)
    # warm-up anew: the fifth update's learning rate is the first's
    assert len(seen["lr"]) == 12 and seen["lr"][4] == seen["lr"][0] < seen["lr"][3]
    # the collapsed weights are never averaged with the fresh ones; the run's end chose among fresh ones
    assert seen["snapshots"][:3] == [[], [], [8]]  # without the restart, step 8 would have seen step 4's
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["step"] > 4 and all(s > 4 for s in best.get("averaged_steps", [best["step"]]))
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["progress"]
    assert (saved["restarts"], saved["restart_step"]) == (1, 4)  # a resume goes on with the fresh run's seed
    # last.pt is saved again as soon as the run starts over: a process killed before the next validation
    # resumes the fresh run, not the collapsed one
    assert seen["last"][:2] == [(4, 0), (4, 1)]


@pytest.mark.parametrize(
    "share, overrides, why",
    [
        (0.9, {"on_collapse": "warn"}, "no restart: train.on_collapse=warn"),
        (0.9, {"collapse_after": 8}, "no restart: less than half the budget left"),  # judged first at 8 of 12
        (0.2, {}, None),  # below train.collapse_share: an aligning model
        (0.9, {"collapse_after": 13}, None),  # never judged within the run
    ],
)
def test_no_restart_without_a_collapse_early_enough_to_pay(tmp_path, monkeypatch, caplog, share, overrides, why):
    with caplog.at_level(logging.WARNING, logger="translate.training"):
        p, seen, _ = _train(tmp_path, monkeypatch, share=share, **overrides)
    collapsed = [r.getMessage() for r in caplog.records if "attention collapsed" in r.getMessage()]
    assert seen["restarts"] == [] and (p.restarts, p.restart_step) == (0, 0)
    assert bool(collapsed) == (why is not None)
    if why:
        assert why in collapsed[0] and "try another train.seed or a lower train.lr" in collapsed[0]
