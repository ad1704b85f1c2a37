"""Checkpoint averaging and the end-of-run choice: the finalist that scores highest with the beam becomes best.pt."""

from __future__ import annotations

import pytest
import torch

from translate.averaging import Snapshots, average_weights
from translate.checkpoint import RunFolder, load_checkpoint, model_payload
from translate.config import TrainConfig
from translate.data import Split
from translate.learner import Learner
from translate.training import Progress, Validation, fit

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


@pytest.mark.parametrize(
    "final_bleu, winner",
    [
        ((60.0, 55.0, 58.0), "best"),
        ((50.0, 62.0, 58.0), "last"),
        ((50.0, 55.0, 61.0), "average"),
        ((60.0, 60.0, 60.0), "best"),  # a tie keeps the best single checkpoint
    ],
)
def test_the_end_of_run_choice_makes_the_finalist_with_the_highest_beam_bleu_best(
    tmp_path, monkeypatch, final_bleu, winner
):
    tokenizer = reversal_tokenizer()
    cfg = TrainConfig(average=2, valid_every=1, final_beam=4)
    model = tiny_model(tokenizer.vocab_size)
    learner = Learner(model, cfg, device=torch.device("cpu"))
    pairs = reversal_pairs(4, seed=5)
    valid = Split([s for s, _ in pairs], [t for _, t in pairs])
    run = RunFolder.open(tmp_path / "run", {"test": 1})
    validation = Validation(learner, tokenizer, valid, cfg=cfg, run=run)
    greedy = iter([50.0, 45.0])  # step 1 (the best single checkpoint), step 2 (final)
    final = iter(final_bleu)  # then the best single checkpoint, the last weights, the average
    scored = []

    def fake_score(net, *, search=None, exact=False):
        beam = (search or validation.search).beam_size
        scored.append((beam, exact, {k: v.clone() for k, v in net.state_dict().items()}))
        bleu = next(final) if exact else next(greedy)
        return {"valid_loss": 1.0, "valid_ppl": 2.7, "valid_bleu": bleu, "valid_chrf": 0.0}, "sig"

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
    run.close()
    # validations decode as training validates (greedy, the training precision); the finalists with
    # train.final_beam in fp32, as translation decodes
    assert [(beam, exact) for beam, exact, _ in scored] == [(1, False), (1, False), (4, True), (4, True), (4, True)]
    first = load_checkpoint(tmp_path / "run" / "snapshots" / "step1.pt")["model"]
    now = model.state_dict()
    expected = {
        "best": first,
        "last": now,
        "average": {k: (first[k] + now[k]) / 2 for k in now},
    }
    for (_, _, weights), name in zip(scored[2:], ("best", "last", "average")):  # each finalist scored as itself
        assert all(torch.allclose(weights[k], expected[name][k], atol=1e-6) for k in now)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert all(torch.allclose(best["model"][k], expected[winner][k], atol=1e-6) for k in now)
    assert best["step"] == (1 if winner == "best" else 2)
    assert best["metrics"]["valid_bleu"] == max(final_bleu) and best["metrics"]["valid_beam"] == 4
    assert ("averaged_steps" in best) == (winner == "average")
    assert best["final_choice"]["chosen"].startswith(
        {"best": "the best single", "last": "the last weights", "average": "the mean weights"}[winner]
    )
    assert sorted(best["final_choice"]["bleu"].values()) == sorted(final_bleu)
    assert best["run_minutes"] == p.elapsed / 60  # the whole run's, whichever step won
    assert (p.stopping.best_bleu, p.stopping.best_step) == (max(final_bleu), best["step"])  # what the run reports
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["progress"]
    assert saved["history"][-1]["step"] == best["step"] and saved["stopping"]["best_bleu"] == max(final_bleu)
    # training state is never averaged: last.pt holds the weights training reached
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.equal(last["model"][k], v) for k, v in now.items())


def test_no_end_of_run_choice_when_the_best_checkpoint_is_the_only_finalist(tmp_path, monkeypatch):
    tokenizer = reversal_tokenizer()
    cfg = TrainConfig(average=0, valid_every=1)  # no average; the best single checkpoint is the last weights
    learner = Learner(tiny_model(tokenizer.vocab_size), cfg, device=torch.device("cpu"))
    pairs = reversal_pairs(4, seed=5)
    run = RunFolder.open(tmp_path / "run", {"test": 1})
    validation = Validation(learner, tokenizer, Split([s for s, _ in pairs], [t for _, t in pairs]), cfg=cfg, run=run)
    calls = []

    def fake_score(net, *, search=None, exact=False):
        calls.append(exact)
        return {"valid_loss": 1.0, "valid_ppl": 2.7, "valid_bleu": 50.0 + len(calls), "valid_chrf": 0.0}, "sig"

    monkeypatch.setattr(validation, "_score", fake_score)
    monkeypatch.setattr(validation, "_draw_attention", lambda step: None)
    p = Progress()
    for step in (1, 2):
        p.step = step
        validation(p, final=step == 2)
    run.close()
    assert calls == [False, False]  # no finalist scored again: nothing to choose between
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["step"] == 2 and "final_choice" not in best


class Killed(Exception):
    """Stands for a process killed (SIGKILL, a lost machine) at that point."""


@pytest.mark.parametrize("killed", ["while scoring the finalists", "between the saves of best.pt and last.pt"])
def test_a_run_stopped_during_the_end_of_run_choice_makes_it_when_resumed(tmp_path, monkeypatch, killed):
    tokenizer = reversal_tokenizer()
    cfg = TrainConfig(average=2, valid_every=1, final_beam=4)
    model = tiny_model(tokenizer.vocab_size)
    pairs = reversal_pairs(4, seed=5)
    valid = Split([s for s, _ in pairs], [t for _, t in pairs])
    run = RunFolder.open(tmp_path / "run", {"test": 1})
    validation = Validation(Learner(model, cfg, device=torch.device("cpu")), tokenizer, valid, cfg=cfg, run=run)
    greedy = iter([50.0, 45.0])
    final = iter([50.0, 55.0, 61.0])  # the best single checkpoint, the last weights, the mean: the mean wins
    calls, first_process = [], [True]

    def fake_score(self, net, *, search=None, exact=False):
        calls.append(exact)
        if exact and killed.startswith("while") and first_process[0]:
            raise Killed
        bleu = next(final) if exact else next(greedy)
        return {"valid_loss": 1.0, "valid_ppl": 2.7, "valid_bleu": bleu, "valid_chrf": 0.0}, "sig"

    def add(kind, step, minutes, **figures):
        if kind == "valid_final" and killed.startswith("between"):
            raise Killed

    monkeypatch.setattr(Validation, "_score", fake_score)
    monkeypatch.setattr(validation, "_draw_attention", lambda step: None)
    monkeypatch.setattr(validation.metrics, "add", add)
    p = Progress()
    p.step = 1
    validation(p, final=False)
    with torch.no_grad():
        for w in model.parameters():
            w.add_(1.0)
    p.step = 2
    with pytest.raises(Killed):
        validation(p, final=True)
    run.close()
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["progress"]
    assert saved["done"] and saved["choice_pending"]  # finished, but best.pt may not be the chosen one yet
    assert ("final_choice" in load_checkpoint(tmp_path / "run" / "best.pt")) == killed.startswith("between")

    # the same command again, in a new process: a new model, restored from last.pt
    calls.clear()
    first_process[0] = False
    run = RunFolder.open(tmp_path / "run", {"test": 1})
    assert run.resume
    learner = Learner(tiny_model(tokenizer.vocab_size), cfg, device=torch.device("cpu"))
    p = fit(learner, tokenizer, None, valid, cfg=cfg, run=run)  # a finished run reads no training data
    run.close()
    # the finalists are scored once in all: on resume where the first process was killed before scoring them all
    assert calls == ([True, True, True] if killed.startswith("while") else [])
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["final_choice"]["chosen"].startswith("the mean weights") and best["averaged_steps"] == [1, 2]
    first = load_checkpoint(tmp_path / "run" / "snapshots" / "step1.pt")["model"]
    now = model.state_dict()
    assert all(torch.allclose(best["model"][k], (first[k] + now[k]) / 2, atol=1e-6) for k in now)
    assert (p.stopping.best_bleu, p.stopping.best_step, p.done) == (61.0, 2, True)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["progress"]
    assert not saved["choice_pending"] and saved["stopping"]["best_bleu"] == 61.0
    assert saved["history"][-1]["valid_beam"] == 4
    # a third start finds nothing left to do
    calls.clear()
    run = RunFolder.open(tmp_path / "run", {"test": 1})
    fit(
        Learner(tiny_model(tokenizer.vocab_size), cfg, device=torch.device("cpu")),
        tokenizer,
        None,
        valid,
        cfg=cfg,
        run=run,
    )
    run.close()
    assert calls == [] and load_checkpoint(tmp_path / "run" / "best.pt")["final_choice"] == best["final_choice"]


def test_a_training_run_averages_its_last_validations(reversal_run):
    run = reversal_run / "run"
    steps = sorted(int(p.stem[4:]) for p in (run / "snapshots").glob("step*.pt"))
    assert steps == [150, 300, 450]  # debug=tiny validates every 150 of its 450 steps
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "end-of-run choice, validation BLEU with beam 5: " in log
    assert "the mean weights of the last 3 validations (steps 150, 300, 450): " in log
    best = load_checkpoint(run / "best.pt")
    choice = best["final_choice"]
    assert choice["beam"] == 5 and len(choice["bleu"]) >= 2  # the average and the best single checkpoint at least
    assert choice["bleu"][choice["chosen"]] == max(choice["bleu"].values()) == best["metrics"]["valid_bleu"]
    assert f"-> best.pt is {choice['chosen']}" in log
    if "averaged_steps" in best:
        snaps = [load_checkpoint(run / "snapshots" / f"step{s}.pt")["model"] for s in steps]
        for name in best["model"]:
            mean = sum(s[name] for s in snaps) / 3
            assert torch.allclose(best["model"][name], mean, atol=1e-5)
