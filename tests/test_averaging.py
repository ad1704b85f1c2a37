"""Checkpoint averaging: the mean of the last validations' weights, kept only when it scores higher."""

from __future__ import annotations

import pytest
import torch

from translate.averaging import Snapshots, average_weights
from translate.checkpoint import RunFolder, load_checkpoint, model_payload
from translate.config import TrainConfig
from translate.data import Split
from translate.learner import Learner
from translate.training import Progress, Validation

from .conftest import reversal_pairs, reversal_tokenizer, tiny_model


def test_the_average_is_the_elementwise_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    out = average_weights([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert int(out["n"]) == 5  # a counter is taken from the last, not averaged


def test_weights_of_another_model_are_refused():
    with pytest.raises(ValueError, match="not the same model"):
        average_weights([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="not the same model"):
        average_weights([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])


def _payload(model, tokenizer, step):
    return {**model_payload(model, tokenizer), "step": step}


def test_snapshots_keep_the_last_n_and_forget_what_a_resumed_run_undid(tmp_path):
    tokenizer = reversal_tokenizer()
    snaps = Snapshots(tmp_path / "snapshots", keep=3)
    models = {}
    for step in (100, 200, 300, 400, 500):
        models[step] = tiny_model(tokenizer.vocab_size, seed=step)
        snaps.add(step, _payload(models[step], tokenizer, step))
    assert snaps.steps() == [300, 400, 500]
    weights, steps = snaps.average()
    assert steps == [300, 400, 500]
    name = "enc_embed.weight" if "enc_embed.weight" in weights else next(iter(weights))
    mean = sum(models[s].state_dict()[name] for s in steps) / 3
    assert torch.allclose(weights[name], mean, atol=1e-6)
    # a resume from the last.pt of step 300 goes on from there: 400 and 500 never happened
    snaps.add(350, _payload(models[300], tokenizer, 350))
    assert snaps.steps() == [300, 350]
    # a snapshot is a model file of its own
    assert load_checkpoint(tmp_path / "snapshots" / "step350.pt")["step"] == 350


def test_nothing_is_kept_when_averaging_is_off(tmp_path):
    tokenizer = reversal_tokenizer()
    snaps = Snapshots(tmp_path / "snapshots", keep=0)
    snaps.add(100, _payload(tiny_model(tokenizer.vocab_size), tokenizer, 100))
    assert snaps.steps() == [] and snaps.average() is None


@pytest.mark.parametrize("averaged_bleu, expect_average", [(60.0, True), (40.0, False)])
def test_the_average_becomes_best_only_if_it_validates_higher(tmp_path, monkeypatch, averaged_bleu, expect_average):
    tokenizer = reversal_tokenizer()
    cfg = TrainConfig(average=2, valid_every=1)
    model = tiny_model(tokenizer.vocab_size)
    learner = Learner(model, cfg, device=torch.device("cpu"))
    pairs = reversal_pairs(4, seed=5)
    valid = Split([s for s, _ in pairs], [t for _, t in pairs])
    run = RunFolder.open(tmp_path / "run", {"test": 1})
    validation = Validation(learner, tokenizer, valid, cfg=cfg, run=run)
    scores = iter([50.0, 45.0, averaged_bleu])  # step 1, step 2 (final), then the average

    def fake_score(net):
        return {"valid_loss": 1.0, "valid_ppl": 2.7, "valid_bleu": next(scores), "valid_chrf": 0.0}, "sig"

    monkeypatch.setattr(validation, "_score", fake_score)
    monkeypatch.setattr(validation, "_draw_attention", lambda step: None)
    p = Progress()
    p.step = 1
    validation(p, final=False)
    with torch.no_grad():
        for w in model.parameters():
            w.add_(1.0)  # the second validation sees other weights
    p.step = 2
    validation(p, final=True)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    run.close()
    if expect_average:
        assert best["averaged_steps"] == [1, 2] and best["metrics"]["valid_bleu"] == 60.0
        assert (p.stopping.best_bleu, p.stopping.best_step) == (60.0, 2)  # what the run reports as its best
        saved = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["progress"]
        assert saved["history"][-1]["averaged_steps"] == [1, 2] and saved["stopping"]["best_bleu"] == 60.0
        first = load_checkpoint(tmp_path / "run" / "snapshots" / "step1.pt")["model"]
        for name, w in model.state_dict().items():
            assert torch.allclose(best["model"][name], (first[name] + w) / 2, atol=1e-6)
    else:
        assert "averaged_steps" not in best and best["step"] == 1
        assert (p.stopping.best_bleu, p.stopping.best_step) == (50.0, 1)
    # training state is never averaged: last.pt holds the weights training reached
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.equal(last["model"][k], v) for k, v in model.state_dict().items())


def test_a_training_run_averages_its_last_validations(reversal_run):
    run = reversal_run / "run"
    steps = sorted(int(p.stem[4:]) for p in (run / "snapshots").glob("step*.pt"))
    assert steps == [150, 300, 450]  # debug=tiny validates every 150 of its 450 steps
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "averaged weights of the last 3 validations (steps 150, 300, 450)" in log
    best = load_checkpoint(run / "best.pt")
    if "averaged_steps" in best:
        snaps = [load_checkpoint(run / "snapshots" / f"step{s}.pt")["model"] for s in steps]
        for name in best["model"]:
            mean = sum(s[name] for s in snaps) / 3
            assert torch.allclose(best["model"][name], mean, atol=1e-5)
