"""Nothing lost: random input keeps its lines, killed training resumes exactly, bad
runs and bad numbers are caught."""

from __future__ import annotations

import io
import itertools
import logging
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translate.batching import Examples
from translate.checkpoint import RunFolder, load_checkpoint
from translate.config import DecodeConfig, TrainConfig
from translate.data import Split
from translate.learner import Learner
from translate.textfile import has_text, iter_lines
from translate.training import TrainingError, fit
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


@pytest.fixture(scope="module")
def translator() -> Translator:
    tokenizer = reversal_tokenizer(300, 11, vocab_size=320, byte_fallback=True)
    return Translator(
        tiny_model(tokenizer.vocab_size),
        tokenizer,
        DecodeConfig(beam_size=1, batch_size=7, max_len_a=1.0, max_len_b=3),
    )


LINE = st.text(st.characters(exclude_characters="\n", exclude_categories=("Cs",)), max_size=25) | st.sampled_from(
    ["", " ", "\t", "\x00", "\r", "🙂🙂", "\u2028", "\x85", "\ufeff", "a b c", "ÄÖÜ ß"]
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=12), crlf=st.booleans(), final_newline=st.booleans(), bom=st.booleans())
def test_random_input_keeps_its_lines_in_order(translator, lines, crlf, final_newline, bom):
    while not final_newline and lines and lines[-1] == "":
        lines = lines[:-1]  # a file without final newline cannot end in an empty line
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = "x" + lines[0]  # at the very start of a file U+FEFF is a byte-order mark, not text
    data = ("\r\n" if crlf else "\n").join(lines) + (("\r\n" if crlf else "\n") if final_newline and lines else "")
    raw = (b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8")
    out = list(translator.translate_lines(iter_lines(io.BytesIO(raw), "<test>")))
    assert len(out) == len(lines)
    assert all("\n" not in o and "\r" not in o for o in out)
    for line, o in zip(lines, out):
        if not has_text(line):  # blank, or only invisible characters (NUL, U+FEFF, ...)
            assert o == ""
    alone = [next(iter(translator.translate_lines([line]))) for line in iter_lines(io.BytesIO(raw), "<t>")]
    assert out == alone  # each line's translation stays at its line, whatever its batch-mates


def test_translation_streams_instead_of_reading_everything(translator):
    endless = itertools.cycle(["a b", "", "c d e"])
    first = list(itertools.islice(translator.translate_lines(endless), 5))
    assert len(first) == 5 and first[1] == "" and first[4] == ""


def test_an_overlong_line_is_cut_with_a_warning_naming_it(translator, caplog):
    translator.max_input_len = 50
    with caplog.at_level(logging.WARNING):
        out = list(translator.translate_lines(["a b", "a " * 10000, "c"]))
    translator.max_input_len = 250
    assert len(out) == 3
    assert any("line 2:" in r.getMessage() and "limit of 50" in r.getMessage() for r in caplog.records)


def test_nonfinite_losses_skip_updates_then_stop_training(tmp_path, caplog):
    tokenizer = reversal_tokenizer(50, 12)
    model = tiny_model(tokenizer.vocab_size, emb_dim=8, enc_hidden=8, dec_hidden=8, attn_dim=8)
    cfg = TrainConfig(max_nonfinite=3, precision="fp32", max_steps=20, valid_every=5)
    learner = Learner(model, cfg, device=torch.device("cpu"))
    pairs = reversal_pairs(40, 13)
    train = Examples(tokenizer.encode([s for s, _ in pairs]), tokenizer.encode([t for _, t in pairs]))
    with torch.no_grad():
        model.decoder.combine.weight.fill_(float("nan"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with RunFolder.open(tmp_path, {}) as run, caplog.at_level(logging.WARNING):
        with pytest.raises(TrainingError, match="3 non-finite losses in a row at step 1"):
            fit(learner, tokenizer, train, Split(["a b"], ["B A"]), cfg=cfg, run=run)
    assert sum("update skipped" in r.getMessage() for r in caplog.records) == 3
    for k, v in model.state_dict().items():  # nothing was updated
        torch.testing.assert_close(v, before[k], equal_nan=True)
    assert not (tmp_path / "best.pt").exists()  # no validation ran on a model that never updated


RESUME_OVERRIDES = [
    o for o in REVERSAL_OVERRIDES if not o.startswith(("train.max_steps", "train.valid_every", "model.dropout"))
]
RESUME_OVERRIDES += ["train.max_steps=240", "train.valid_every=40", "model.dropout=0.1"]


def start_training(args: list[str], run_dir: str, cwd) -> tuple[subprocess.Popen, object]:
    """Start `translate train` in a subprocess; return once it has saved its first last.pt."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "translate", "train", *args, f"run_dir={run_dir}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    last = cwd / run_dir / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    return proc, last


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a["step"] == b["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs {what}"


@pytest.mark.slow
def test_training_killed_mid_run_resumes_to_the_same_weights(tmp_path):
    write_text_corpus(
        tmp_path / "corpus",
        {"train": reversal_pairs(1500, 21), "val": reversal_pairs(30, 22), "test": reversal_pairs(30, 23)},
    )
    args = [*RESUME_OVERRIDES, f"data.path={tmp_path / 'corpus'}"]
    full = run_cli("train", *args, "run_dir=full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr.decode()[-2000:]
    reference = load_checkpoint(tmp_path / "full" / "last.pt")
    assert reference["step"] == 240

    # a larger budget does not extend a finished run: it says so and leaves the checkpoint alone
    longer = run_cli("train", *args, "run_dir=full", "train.max_steps=480", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr.decode()[-2000:]
    said = longer.stdout.decode() + longer.stderr.decode()
    assert "is complete (step 240" in said and "new run_dir" in said
    assert_same_weights(reference, load_checkpoint(tmp_path / "full" / "last.pt"), "after a longer budget")

    # SIGKILL right after the first save: the rerun resumes from that last.pt
    proc, last = start_training(args, "killed", tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 0 < load_checkpoint(last)["step"] < 240, "the kill should land mid-run"
    resumed = run_cli("train", *args, "run_dir=killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert "resumed from" in resumed.stdout.decode() + resumed.stderr.decode()
    killed = load_checkpoint(last)
    assert_same_weights(reference, killed, "after a SIGKILL and resume")
    best_bleu = lambda ckpt: ckpt["train_state"]["progress"]["stopping"]["best_bleu"]  # noqa: E731
    assert best_bleu(reference) == best_bleu(killed)

    # Ctrl-C (SIGINT) stops after the current step, saves last.pt there, and exits 130
    proc, stopped = start_training(args, "stopped", tmp_path)
    time.sleep(0.3)  # a few steps past the first save
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out.decode()[-2000:]
    assert "run the same command again to resume" in out.decode()
    assert load_checkpoint(stopped)["step"] < 240
    again = run_cli("train", *args, "run_dir=stopped", cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert_same_weights(reference, load_checkpoint(stopped), "after a Ctrl-C and resume")

    # a different configuration into the same folder is refused, unless asked to overwrite
    other = run_cli("train", *args, "run_dir=killed", "model.emb_dim=32", cwd=tmp_path)
    assert other.returncode != 0 and "different configuration" in other.stderr.decode()
    assert "model.emb_dim" in other.stderr.decode()
