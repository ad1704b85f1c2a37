"""Data-parallel training under torchrun: two CPU processes (Gloo) learn the task, stay in
step, stop together on a wall-clock budget, and one of them writes the checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from translate.checkpoint import load_checkpoint
from translate.distributed import SINGLE, Agreement, Group, agree, any_of, check_in_sync, shard

from .conftest import REVERSAL_OVERRIDES, ROOT, reversal_pairs, write_text_corpus


def test_each_process_gets_an_equal_disjoint_share_of_the_batches():
    batches = [[i] for i in range(11)]
    shares = [shard(batches, Group(rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]
    seen = [b[0] for s in shares for b in s]
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(11))
    assert shard(batches, SINGLE) == batches
    assert any_of(SINGLE, True, False) == (True, False)


def _drift(rank: int, init_file: str, errors) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # fmt: skip
    group = Group(rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    check_in_sync(model, group)  # identical weights pass
    assert any_of(group, rank == 1, False) == (True, False)
    with torch.no_grad():
        model.weight[0, 0] += rank  # process 1 drifts
    try:
        check_in_sync(model, group)
    except RuntimeError as err:
        errors.put(str(err))
    dist.destroy_process_group()


def test_drifting_weights_across_processes_are_caught(tmp_path):
    errors = mp.get_context("spawn").Queue()
    mp.spawn(_drift, args=(str(tmp_path / "init"), errors), nprocs=2)  # the collectives time out after 60 s
    messages = [errors.get(timeout=30) for _ in range(2)]  # queue.Empty if the check stopped raising
    assert all("weights differ" in m for m in messages)


def _agree(rank: int, init_file: str, answers) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # fmt: skip
    group = Group(rank=rank, world_size=2)
    answers.put((rank, agree(group, elapsed=10.0 + rank, nonfinite=rank == 1, stop=False, tokens=100 * (rank + 1))))
    dist.destroy_process_group()


def test_the_processes_agree_on_the_slowest_clock_any_skip_and_the_token_sum(tmp_path):
    answers = mp.get_context("spawn").Queue()
    mp.spawn(_agree, args=(str(tmp_path / "init"), answers), nprocs=2)
    got = dict(answers.get(timeout=30) for _ in range(2))
    assert got[0] == got[1] == Agreement(elapsed=11.0, nonfinite=True, stop=False, tokens=300)
    assert agree(SINGLE, elapsed=1.5, nonfinite=False, stop=True, tokens=7) == Agreement(1.5, False, True, 7)


def _release(rank: int, init_file: str, answers) -> None:
    import gc
    import weakref

    from translate.config import TrainConfig
    from translate.learner import Learner
    from translate.precision import Choice

    from .conftest import tiny_model

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # fmt: skip
    gc.disable()  # only close() may collect: the cycle collector would free the wrapper at a time of its own
    learner = Learner(tiny_model(20), TrainConfig(), device=torch.device("cpu"), group=Group(rank, 2),
                      precision=Choice("fp32", "asked for"))  # fmt: skip
    wrapper = weakref.ref(learner.net)
    del learner.net  # the learner's reference alone: what is left is DDP's own cycle
    held = wrapper() is not None
    learner.net = wrapper()
    learner.close()
    answers.put((rank, held, wrapper() is None))
    gc.enable()
    dist.destroy_process_group()


def test_closing_the_learner_frees_ddp_before_the_process_group_goes(tmp_path):
    # DDP holds the process group from inside a reference cycle; freed at interpreter exit
    # instead, Gloo's teardown aborted a torchrun process (a CI run on 2026-12-04)
    answers = mp.get_context("spawn").Queue()
    mp.spawn(_release, args=(str(tmp_path / "init"), answers), nprocs=2)
    got = dict((rank, rest) for rank, *rest in (answers.get(timeout=30) for _ in range(2)))
    assert got == {0: [True, True], 1: [True, True]}  # the cycle is there, and close() frees it


def torchrun(*args: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, "-m", "translate", "train", *args], cwd=cwd, capture_output=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_torchrun_trains_with_two_processes(tmp_path):
    corpus = write_text_corpus(
        tmp_path / "corpus",
        {"train": reversal_pairs(4000, seed=1), "val": reversal_pairs(100, seed=2), "test": reversal_pairs(100, 3)},
    )
    overrides = [o for o in REVERSAL_OVERRIDES if not o.startswith(("train.max_steps", "train.valid_every"))]
    args = [*overrides, f"data.path={corpus}", "train.valid_every=100"]
    result = torchrun(*args, "train.max_steps=300", "run_dir=ddp", cwd=tmp_path)
    said = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, said[-3000:]
    assert "distributed training: 2 processes, backend gloo" in said
    assert said.count("best validation BLEU") == 1  # process 0 alone reports (and saves)
    # the weights were checked identical across processes at every validation, or the run would have failed
    last, best = load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "ddp" / "best.pt")
    assert last["step"] == 300
    assert best["metrics"]["valid_bleu"] > 80

    # a wall-clock budget ends both processes at the same step: no process waits forever
    timed = torchrun(*args, "train.max_time=0.15", "run_dir=timed", cwd=tmp_path, timeout=240)
    assert timed.returncode == 0, (timed.stdout.decode() + timed.stderr.decode())[-3000:]
    assert load_checkpoint(tmp_path / "timed" / "last.pt")["train_state"]["progress"]["done"]

    # a run that starts over (here any attention on EOS counts as a collapse: this task puts about 1e-7 there
    # at update 100) does so in both processes at once, with the same fresh weights: the check at the next
    # validation would fail otherwise
    torch_args = [*args, "train.max_steps=200", "train.collapse_after=100", "train.collapse_share=1e-30"]
    restarted = torchrun(*torch_args, "run_dir=restarted", cwd=tmp_path)
    said = restarted.stdout.decode() + restarted.stderr.decode()
    assert restarted.returncode == 0, said[-3000:]
    assert said.count("started over at step 100") >= 1, said[-3000:]
    progress = load_checkpoint(tmp_path / "restarted" / "last.pt")["train_state"]["progress"]
    assert (progress["step"], progress["restarts"], progress["restart_step"]) == (200, 1, 100)
