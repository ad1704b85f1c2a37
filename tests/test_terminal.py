"""What a user sees and keeps: sweeps, progress bars on a terminal, the first lines of a
run, refused commands, an unreachable hub (issue 13)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from translate.config import DecodeConfig
from translate.translator import Translator

from .conftest import (
    REVERSAL_OVERRIDES,
    ROOT,
    reversal_pairs,
    reversal_tokenizer,
    run_cli,
    tiny_model,
    write_text_corpus,
)

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ")


def small_corpus(folder: Path) -> Path:
    splits = {
        "train": reversal_pairs(600, seed=1),
        "val": reversal_pairs(30, seed=2),
        "test": reversal_pairs(30, seed=3),
    }
    return write_text_corpus(folder, splits)


def on_terminal(
    args: list[str], cwd: Path, *, until: bytes | None = None, then=None, timeout: int = 300, env: dict | None = None
) -> bytes:
    """Run `python -m translate ARGS` with stdout and stderr on a pseudo-terminal (120 columns);
    when `until` shows up in the output, call `then(process)`. Returns all it printed."""
    import pty

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "translate", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env)  # fmt: skip
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # the process closed its end
                    break
                if not data:
                    break
                out += data
                if until is not None and until in out:
                    then(proc)
                    until = None
            elif proc.poll() is not None:
                break
        proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(master)
    return out


def lines_as_shown(out: bytes) -> list[str]:
    """What each terminal line ends up showing: the text after its last carriage return."""
    return [line.split("\r")[-1] for line in out.decode(errors="replace").replace("\r\n", "\n").split("\n")]


@pytest.mark.slow
def test_a_sweep_trains_each_job_in_its_own_folder_and_sums_them_up(tmp_path):
    corpus = small_corpus(tmp_path / "corpus")
    # dot with these sizes is refused (query 64 vs keys 128): that job fails, the others still run
    result = run_cli("train", "-m", *REVERSAL_OVERRIDES, f"data.path={corpus}", "run_dir=study",
                     "train.max_steps=10", "train.valid_every=10", "model.attention=general,dot,bahdanau",
                     cwd=tmp_path)  # fmt: skip
    out = result.stdout.decode()
    assert result.returncode == 1, result.stderr.decode()[-3000:]
    assert "sweep: 3 jobs, 1 failed" in out
    for name in ("model.attention-general", "model.attention-bahdanau"):
        job = tmp_path / "study" / name
        assert (job / "best.pt").is_file() and (job / "last.pt").is_file()
        log = (job / "train.log").read_text()  # the log beside the checkpoints
        assert f"run folder study/{name}: a new run" in log and "validation at step 10" in log
    assert not (tmp_path / "study" / "model.attention-dot" / "best.pt").exists()
    table = (tmp_path / "study" / "sweep.tsv").read_text().splitlines()
    assert table[0].startswith("run_dir\tvalid_bleu") and len(table) == 4
    assert table[1].startswith("study/model.attention-general\t") and table[1].endswith("done")
    assert "failed: model.attention=dot needs equal query and key sizes" in table[2]
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_refused_command_leaves_the_run_folder_byte_identical(reversal_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reversal_run / "run", run)
    data = [*REVERSAL_OVERRIDES, f"data.path={reversal_run / 'corpus'}", f"run_dir={run}"]
    snapshot = lambda: {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}  # noqa: E731
    before = snapshot()
    assert (run / "train.log").is_file() and (run / ".hydra" / "train" / "overrides.yaml").is_file()
    bad_value = run_cli("train", *data, "train.precision=fp16", cwd=tmp_path)
    assert bad_value.returncode == 1 and "train.precision='fp16' is not allowed" in bad_value.stderr.decode()
    other_run = run_cli("train", *data, "model.attention=bahdanau", cwd=tmp_path)
    assert other_run.returncode == 1 and "different configuration (model.attention)" in other_run.stderr.decode()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(run / "best.pt", elsewhere / "model.pt")
    scored = run_cli("bleu", *data, f"decode.checkpoint={elsewhere / 'model.pt'}", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr.decode()[-2000:]
    assert (elsewhere / "test.model.beam3.yy").is_file()  # its hypotheses go beside the model it read
    assert snapshot() == before, "a refused or reading command changed the run folder"


@pytest.mark.slow
def test_the_first_lines_of_a_run_say_what_it_is(reversal_run):
    log = (reversal_run / "run" / "train.log").read_text()
    head = "\n".join(log.splitlines()[:8])
    for said in ("run folder run: a new run", "corpus: ", "train 4000, valid 100, test 100 pairs", "parameters",
                 "general attention", "device cpu", "threads", "precision ", "budget: 450 steps"):  # fmt: skip
        assert said in head, f"{said!r} not in the first lines:\n{head}"


def test_an_unreachable_hub_fails_fast_with_one_message_in_the_users_terms(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    # the "hub" is a closed port on this machine (discard, 9): nothing leaves it, no name is looked up
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "translate", "train", "data.src_lang=en", "data.tgt_lang=fr",
                           "run_dir=run"], cwd=tmp_path, env=env, capture_output=True, timeout=300)  # fmt: skip
    said = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 1
    assert said.count("cannot be reached") == 1, said
    assert "train.en, train.fr, val.en, val.fr, test2016.en, test2016.fr" in said and "data.path=FOLDER" in said
    assert "Retrying" not in said and "Traceback" not in said and "../shared" not in said
    assert not (tmp_path / "run").exists()  # a start that failed leaves no run folder


@pytest.mark.slow
def test_log_lines_never_run_through_the_bar_and_a_resumed_bar_ends_at_its_total(tmp_path):
    corpus = small_corpus(tmp_path / "corpus")
    args = ["train", *REVERSAL_OVERRIDES, f"data.path={corpus}", "run_dir=run", "train.max_steps=40",
            "train.valid_every=20", "train.log_every=5"]  # fmt: skip
    first = on_terminal(args, tmp_path, until=b"INFO step 10 ", then=lambda p: p.send_signal(signal.SIGINT))
    assert b"stopped at step" in first, first[-2000:]
    second = on_terminal(args, tmp_path)
    for out in (first, second):
        shown = [line for line in lines_as_shown(out) if " INFO " in line or " WARNING " in line]
        assert shown and all(LOG_LINE.match(line) for line in shown), shown
        assert b"train:" in out  # the bar was drawn
    assert b"resuming the run from step" in second
    steps = [int(n) for n in re.findall(rb"train:\s+\d+%\|[^|]*\|\s+(\d+)/40", second)]
    assert steps[0] >= 10 and steps[-1] == 40, steps  # starts where the run stopped, ends at its total
    assert b"validation:" in second  # validation has its own bar


def test_the_translate_bar_moves_with_every_decoded_batch():
    tokenizer = reversal_tokenizer()
    translator = Translator(tiny_model(tokenizer.vocab_size), tokenizer, DecodeConfig(beam_size=2, batch_size=8))
    lines = [s for s, _ in reversal_pairs(45, seed=4)] + ["", "  "]
    done: list[int] = []
    out = translator.translate_lines(lines, progress=done.append)
    first = next(out)
    assert len(done) >= 6 and sum(done) == len(lines)  # per batch, before the first line comes out
    assert len([first, *out]) == len(lines)
    with pytest.raises(TypeError, match="one sentence"):
        list(translator.translate_lines("a b c"))


@pytest.mark.slow
def test_the_translate_bar_counts_the_lines_of_its_file(reversal_run, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(s + "\n" for s, _ in reversal_pairs(120, seed=5)), encoding="utf-8")
    args = ["translate", "--model", str(reversal_run / "run" / "best.pt"), str(src), "-o", str(tmp_path / "out.txt"),
            "--batch-size", "16"]  # fmt: skip
    out = on_terminal(args, tmp_path, env={"TQDM_MININTERVAL": "0"})  # every update drawn, however fast
    counts = [int(n) for n in re.findall(rb"(\d+)/120 ", out)]
    assert len(set(counts)) >= 3 and counts == sorted(counts) and counts[-1] <= 120, out[-1500:]  # per batch
    assert len((tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()) == 120


def test_prepare_shows_a_bar_over_the_training_pairs(tmp_path):
    corpus = small_corpus(tmp_path / "corpus")
    out = on_terminal(["prepare", *REVERSAL_OVERRIDES, f"data.path={corpus}"], tmp_path, timeout=120)
    assert re.search(rb"tokenize: 100%\|[^|]*\| 600/600", out), out[-2000:]
    assert b"600 training pairs" in out and not (tmp_path / "runs").exists()
