"""Nothing silently wrong: output paths, concurrent runs, damaged models, saves that fail,
lines that only look empty, and bad input that gets a message instead of a traceback."""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile

import pytest
import torch

from translate.checkpoint import CheckpointError, RunFolder, load_checkpoint, model_payload, save_checkpoint
from translate.config import DecodeConfig
from translate.data import DataError, load_corpus
from translate.prepared import prepare
from translate.textfile import has_text, write_lines, write_output
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


def write_hello(f) -> None:
    write_lines(f, ["hello", "world"])


# ---- -o writes to what the path names ---------------------------------------------------


def test_output_into_a_fifo_reaches_its_reader_and_the_fifo_stays(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    write_output(str(fifo), write_hello)
    reader.join(timeout=30)
    assert got == [b"hello\nworld\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_output_into_a_device_writes_into_it_and_the_device_stays(tmp_path):
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:  # pragma: no cover - CI and the dev machines run as root
        null = "/dev/null"
    write_output(str(null), write_hello)
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_output_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path):
    target, link = tmp_path / "real.txt", tmp_path / "link.txt"
    target.write_text("old\n")
    link.symlink_to(target)
    write_output(str(link), write_hello)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "hello\nworld\n"


def test_a_replaced_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    kept = tmp_path / "kept.txt"
    kept.write_text("old\n")
    kept.chmod(0o644)
    write_output(str(kept), write_hello)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o644 and kept.read_text() == "hello\nworld\n"
    old = os.umask(0o027)
    try:
        write_output(str(tmp_path / "new.txt"), write_hello)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640


def test_a_missing_output_folder_is_an_error_not_created(tmp_path):
    with pytest.raises(FileNotFoundError, match="create it first"):
        write_output(str(tmp_path / "no" / "such" / "out.txt"), write_hello)
    assert not (tmp_path / "no").exists()


# ---- damaged model files ------------------------------------------------------------------


@pytest.fixture()
def model_file(tmp_path):
    tokenizer = reversal_tokenizer(100, 3)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model_payload(tiny_model(tokenizer.vocab_size), tokenizer))
    return path


def flip_bit(path, member: str, offset: int, bit: int) -> None:
    """Flip one bit inside a zip member's stored bytes, leaving the archive's structure alone."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + name_len + extra_len + offset
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ (1 << bit)]))


def members(path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return z.namelist()


def test_a_flipped_bit_in_the_weights_is_refused_as_damage(model_file):
    tensor = next(n for n in members(model_file) if "/data/" in n and not n.endswith(".pkl"))
    flip_bit(model_file, tensor, offset=3, bit=6)  # an exponent bit of the first float
    with pytest.raises(CheckpointError, match="damaged") as err:
        load_checkpoint(model_file)
    assert "run code" not in str(err.value) and "weights_only" not in str(err.value)


def test_a_flipped_bit_in_the_metadata_is_damage_not_a_code_threat(model_file):
    pkl = next(n for n in members(model_file) if n.endswith("data.pkl"))
    flip_bit(model_file, pkl, offset=40, bit=1)
    with pytest.raises(CheckpointError, match="damaged") as err:
        load_checkpoint(model_file)
    assert "run code" not in str(err.value) and "weights_only" not in str(err.value)


def test_nan_weights_are_refused(tmp_path):
    tokenizer = reversal_tokenizer(100, 3)
    model = tiny_model(tokenizer.vocab_size)
    with torch.no_grad():
        model.decoder.combine.weight.fill_(float("nan"))
    save_checkpoint(tmp_path / "nan.pt", model_payload(model, tokenizer))
    with pytest.raises(CheckpointError, match="decoder.combine.weight.*NaN or infinite"):
        load_checkpoint(tmp_path / "nan.pt")


@pytest.mark.parametrize("version", [0, -1, "1", True, 1.0])
def test_a_format_version_no_translate_writes_is_refused(tmp_path, version):
    path = tmp_path / "odd.pt"
    torch.save({"format_version": version, "model_config": {}, "vocab_size": 1, "tokenizer": torch.zeros(1),
                "model": {}}, path)  # fmt: skip
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: c["model_config"].update(colour="blue"), "stored model does not fit"),
        (lambda c: c["model_config"].update(emb_dim="wide"), "stored model does not fit"),
        (lambda c: c["model_config"].update(attention="luong"), "model.attention='luong'"),
        (lambda c: c.update(tokenizer=torch.zeros(10, dtype=torch.uint8)), "SentencePiece model is unusable"),
    ],
)
def test_a_stored_config_or_tokenizer_that_does_not_fit_gets_a_message(model_file, change, message):
    ckpt = load_checkpoint(model_file)
    change(ckpt)
    torch.save(ckpt, model_file)
    with pytest.raises(CheckpointError, match=message):
        Translator.from_checkpoint(str(model_file), DecodeConfig(), device="cpu")


# ---- runs: one at a time, saves that fail, leftovers ---------------------------------------


def test_a_failed_save_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    payload = {"model_config": {}, "vocab_size": 1, "tokenizer": torch.zeros(1), "model": {}}
    with RunFolder.open(tmp_path, {"x": 1}) as run:
        run.save("last.pt", {**payload, "step": 1})

        def full_disk(obj, f, *args, **kwargs):
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(torch, "save", full_disk)
        with pytest.raises(CheckpointError, match="could not save .*last.pt: No space left on device.*kept whole"):
            run.save("last.pt", {**payload, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "last.pt"]


def test_temporary_files_of_a_killed_save_are_removed_when_the_folder_is_next_opened(tmp_path):
    (tmp_path / ".last.pt.k3j2.tmp").write_bytes(b"x" * 1000)
    (tmp_path / "notes.tmp").write_text("mine")
    RunFolder.open(tmp_path, {}).close()
    assert not (tmp_path / ".last.pt.k3j2.tmp").exists() and (tmp_path / "notes.tmp").exists()


@pytest.mark.slow
def test_a_second_training_into_a_busy_run_folder_is_refused_naming_the_first(tmp_path):
    corpus = write_text_corpus(
        tmp_path / "corpus",
        {"train": reversal_pairs(2000, 41), "val": reversal_pairs(30, 42), "test": reversal_pairs(30, 43)},
    )
    args = [*REVERSAL_OVERRIDES, f"data.path={corpus}", "run_dir=shared"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-m", "translate", "train", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        lock = tmp_path / "shared" / ".lock"
        deadline = time.time() + 60
        while not (lock.exists() and lock.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        second = run_cli("train", *args, "model.emb_dim=32", cwd=tmp_path, timeout=120)
        assert first.poll() is None, "the first training should still be running"
    finally:
        first.kill()
        first.wait(timeout=30)
    err = second.stderr.decode()
    assert second.returncode != 0 and f"in use by process {first.pid}" in err and "Traceback" not in err
    RunFolder.open(tmp_path / "shared", {}, overwrite=True).close()  # the killed holder left no lock


@pytest.mark.slow
def test_an_unset_dropout_and_embedding_size_come_from_the_budget_and_a_resumed_run_keeps_its_own(tmp_path):
    corpus = write_text_corpus(
        tmp_path / "corpus",
        {"train": reversal_pairs(300, 51), "val": reversal_pairs(20, 52), "test": reversal_pairs(20, 53)},
    )
    args = [*REVERSAL_OVERRIDES, f"data.path={corpus}", "model.dropout=null", "train.valid_every=5", "train.average=0"]
    args += ["model.emb_dim=null", "train.emb_dim_by_budget.45=24"]  # 256 below 45 minutes, 24 from 45 on
    args.append("train.precision=fp32")  # no timed probe: this test is about the model's settings

    def train(*more: str) -> str:
        result = run_cli("train", *args, *more, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        return result.stderr.decode()

    def last(run: str) -> dict:
        return load_checkpoint(tmp_path / run / "last.pt")

    log = train("run_dir=short", "train.max_time=30", "train.max_steps=5")
    assert "dropout 0.2 (train.dropout_by_budget for a 30-minute budget)" in log
    assert "embeddings 256 (train.emb_dim_by_budget for a 30-minute budget)" in log
    assert last("short")["model_config"]["dropout"] == 0.2 and last("short")["model_config"]["emb_dim"] == 256
    # from 45 minutes on the dropout follows the updates the run is expected to make ({"0": 0.5, "7000": 0.6}):
    # 5 steps at most, or an hour of a step the probe times at some milliseconds (one epoch ends the run)
    log = train("run_dir=long", "train.max_time=60", "train.max_steps=5")
    assert "dropout 0.5 (train.dropout_by_budget for a 60-minute budget and about 5 updates (one fp32 step" in log
    assert "embeddings 24 (train.emb_dim_by_budget for a 60-minute budget)" in log
    assert last("long")["model_config"]["dropout"] == 0.5 and last("long")["model_config"]["emb_dim"] == 24
    log = train("run_dir=many", "train.max_time=60", "train.max_steps=null", "train.max_epochs=1")
    many = re.search(r"dropout 0.6 \(train.dropout_by_budget for a 60-minute budget and about ([\d,]+) updates", log)
    assert many and int(many[1].replace(",", "")) >= 7000 and "measured now, kept in" not in log  # timed above
    assert last("many")["model_config"]["dropout"] == 0.6
    # opened again with a shorter budget (a key a resumption may change): the model is rebuilt with the
    # run's own dropout and embedding size, not the new budget's (the finished run then says it is complete)
    log = train("run_dir=long", "train.max_time=30", "train.max_steps=10")
    assert "resuming the run from step 5" in log and "dropout 0.5 (the resumed run's)" in log
    assert "embeddings 24 (the resumed run's)" in log
    assert "dropout 0.2" not in log and last("long")["model_config"]["dropout"] == 0.5


# ---- corpora that cannot train ----------------------------------------------------------------


def test_an_empty_or_blank_training_file_is_a_message(tmp_path):
    from translate.config import DataConfig

    corpus = write_text_corpus(
        tmp_path / "c", {"train": [("", " "), ("\t", "")], "val": [("a", "A")], "test": [("a", "A")]}
    )
    cfg = DataConfig(path=str(corpus), format="text", src_lang="xx", tgt_lang="yy", test_prefix="test",
                     artefacts=str(tmp_path / "data"), vocab_size=60)  # fmt: skip
    with pytest.raises(DataError, match="holds no text"):
        prepare(cfg)


def test_malformed_json_lines_name_the_folder(tmp_path):
    from translate.config import DataConfig

    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"en": "a", "de": "b"}\n{"en": "c", "de": \n')
    with pytest.raises(DataError, match=f"could not read the dataset in {folder}"):
        load_corpus(DataConfig(path=str(folder), format="hub"))


@pytest.mark.slow
def test_an_empty_validation_split_stops_before_training(tmp_path):
    corpus = write_text_corpus(
        tmp_path / "c", {"train": reversal_pairs(200, 5), "val": [], "test": reversal_pairs(5, 6)}
    )
    result = run_cli("train", *REVERSAL_OVERRIDES, f"data.path={corpus}", "run_dir=run", cwd=tmp_path, timeout=120)
    err = result.stderr.decode()
    assert result.returncode != 0 and "validation split" in err and "is empty" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


# ---- lines and pipes ------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["\ufeff", "\x00", "\u200b\u200b", " \x00\t\ufeff ", "\u2028", "\x85\x0b"])
def test_a_line_of_only_invisible_characters_is_blank(line):
    assert not has_text(line)
    tokenizer = reversal_tokenizer(100, 3)
    translator = Translator(tiny_model(tokenizer.vocab_size), tokenizer, DecodeConfig(beam_size=1))
    assert list(translator.translate_lines(["a b", line, "c"]))[1] == ""


@pytest.mark.parametrize("line", ["a", " ß ", "\u00a0x", "🙂", "\ue000"])
def test_visible_text_is_text(line):
    assert has_text(line)


def test_decoding_batches_stay_within_the_token_budget_and_translations_do_not_change():
    tokenizer = reversal_tokenizer(300, 11, vocab_size=320, byte_fallback=True)
    model = tiny_model(tokenizer.vocab_size)
    lines = [" ".join("abcdefghijkl"[(i * j) % 12] for j in range(1 + i % 40)) for i in range(300)]
    wide = Translator(model, tokenizer, DecodeConfig(beam_size=3, batch_size=4096, batch_tokens=10**9))
    bounded = Translator(model, tokenizer, DecodeConfig(beam_size=3, batch_size=4096, batch_tokens=2000))
    seen: list[list[list[int]]] = []
    original = bounded.search
    bounded.search = lambda src, **kw: seen.append(src) or original(src, **kw)
    assert list(bounded.translate_lines(lines)) == list(wide.translate_lines(lines))
    assert len(seen) > 1
    for src in seen:
        assert len(src) == 1 or len(src) * 3 * (max(map(len, src)) + 1) <= 2000


@pytest.mark.slow
def test_a_pipe_gets_each_translation_as_soon_as_it_writes_the_line(reversal_run):
    model = reversal_run / "run" / "best.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "translate", "translate", "--model", str(model), "--stream",
                             "--beam", "2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)  # fmt: skip
    try:
        for line, want in [("a b c", b"C B A\n"), ("d e f g", b"G F E D\n"), ("", b"\n")]:  # lengths as trained
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, f"no translation of {line!r} within 60 s"
            assert proc.stdout.readline() == want
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


@pytest.mark.slow
def test_ctrl_c_and_a_closed_pipe_end_translate_without_a_traceback(reversal_run):
    model = reversal_run / "run" / "best.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "translate", "translate", "--model", str(model), "--stream"]
    # Ctrl-C at a terminal reaches a program whose SIGINT is at its default; a job started in the background of a
    # script (CI launched with &) inherits it ignored, and Python then never raises KeyboardInterrupt: set it back
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    proc.stdin.write(b"a b\n")
    proc.stdin.flush()
    assert select.select([proc.stdout], [], [], 60)[0], "no translation within 60 s"
    answer = proc.stdout.readline()
    assert answer.endswith(b"\n") and answer.strip()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"Traceback" not in err

    many = b"a b c d e f g h\n" * 10000  # 160 kB of translations: more than a pipe holds, so writes fail
    head = subprocess.run(f"{sys.executable} -m translate translate --model {model} --beam 1 | head -1", shell=True,
                          input=many, capture_output=True, env=env, timeout=300)  # fmt: skip
    assert len(head.stdout.splitlines()) == 1
    assert b"Traceback" not in head.stderr and b"BrokenPipe" not in head.stderr


@pytest.mark.slow
def test_stdin_and_stdout_as_dash_and_a_missing_output_folder(reversal_run):
    model = str(reversal_run / "run" / "best.pt")
    dash = run_cli("translate", "--model", model, "-", "-o", "-", cwd=reversal_run, input=b"a b c\nd e f\n")
    plain = run_cli("translate", "--model", model, cwd=reversal_run, input=b"a b c\nd e f\n")
    assert dash.returncode == 0 and dash.stdout == plain.stdout and len(dash.stdout.splitlines()) == 2
    missing = run_cli("translate", "--model", model, "-o", "nowhere/out.txt", cwd=reversal_run, input=b"a b\n")
    assert missing.returncode == 2 and b"create it first" in missing.stderr
    assert not (reversal_run / "nowhere").exists()


@pytest.mark.slow
def test_bleu_prints_the_score_when_the_hypotheses_cannot_be_saved(reversal_run):
    blocker = reversal_run / "run" / "test.best.beam3.yy"
    blocker.unlink(missing_ok=True)
    blocker.mkdir()  # a folder where the hypotheses file would go
    try:
        args = [*REVERSAL_OVERRIDES, f"data.path={reversal_run / 'corpus'}", "run_dir=run"]
        result = run_cli("bleu", *args, cwd=reversal_run)
    finally:
        blocker.rmdir()
    said = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 1
    assert "test xx-yy BLEU = " in result.stdout.decode()
    assert "is a folder" in result.stderr.decode() and "Traceback" not in said
    other = run_cli("bleu", *args, "data.src_lang=yy", "data.tgt_lang=xx", cwd=reversal_run)
    assert "was trained for xx-yy, not yy-xx" in other.stdout.decode() + other.stderr.decode()


def test_resuming_from_a_file_without_training_state_is_a_message(tmp_path):
    from translate.batching import Examples
    from translate.config import TrainConfig
    from translate.data import Split
    from translate.learner import Learner
    from translate.training import TrainingError, fit

    tokenizer = reversal_tokenizer(100, 3)
    model = tiny_model(tokenizer.vocab_size)
    with RunFolder.open(tmp_path, {"x": 1}) as run:
        run.save("last.pt", {**model_payload(model, tokenizer), "step": 5})  # best.pt-style: weights only
    cfg = TrainConfig(max_steps=10, precision="fp32")
    with RunFolder.open(tmp_path, {"x": 1}) as run, pytest.raises(TrainingError, match="no training state.*overwrite"):
        fit(Learner(model, cfg, device=torch.device("cpu")), tokenizer, Examples([[4]], [[5]]), Split(["a"], ["A"]),
            cfg=cfg, run=run)  # fmt: skip


@pytest.mark.slow
def test_a_terminal_on_stdin_gets_each_line_translated_as_it_is_typed(reversal_run):
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "translate", "translate", "--model", str(reversal_run / "run" / "best.pt")]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    os.close(slave)
    try:
        for line in (b"a b c\n", b"d e f g\n"):
            os.write(master, line)  # typed, no end of input
            assert select.select([proc.stdout], [], [], 60)[0], f"no translation of {line!r} within 60 s"
            answer = proc.stdout.readline()
            assert answer.endswith(b"\n") and answer.strip()
        os.write(master, b"\x04")  # Ctrl-D ends the input
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(master)
