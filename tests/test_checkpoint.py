"""Checkpoints: a round trip translates identically; loading never runs code from the file."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from translate.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    RunFolder,
    RunFolderError,
    load_checkpoint,
    save_checkpoint,
)

from .conftest import ROOT


class Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "trap": Payload(str(marker))}, evil)
    # the file really carries the payload: plain unpickling would run it
    with zipfile.ZipFile(evil) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"touch" in data
    with pytest.raises(CheckpointError, match="could run code") as err:
        load_checkpoint(evil)
    assert "weights_only" not in str(err.value)  # never the advice to load it unsafely
    assert not marker.exists()
    pickle.loads(data)  # the control: unrestricted unpickling does run it
    assert marker.exists()


def test_truncated_and_foreign_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model_config": {}, "vocab_size": 1, "tokenizer": torch.zeros(1), "model": {}})
    blob = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="no model file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save(
        {
            "format_version": FORMAT_VERSION + 1,
            "model_config": {},
            "vocab_size": 1,
            "tokenizer": torch.zeros(1),
            "model": {},
        },
        path,
    )
    with pytest.raises(CheckpointError, match="upgrade translate"):
        load_checkpoint(path)


def test_save_is_atomic_when_writing_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model_config": {}, "vocab_size": 1, "tokenizer": torch.zeros(1), "model": {}, "step": 1})

    class Boom:
        def __reduce__(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model_config": {}, "step": 2, "bad": Boom()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_run_folder_starts_resumes_refuses_or_overwrites(tmp_path):
    identity = {"model.emb_dim": 8, "train.lr": 0.1}
    with RunFolder.open(tmp_path / "run", identity) as run:
        assert not run.resume
        run.save("last.pt", {"step": 3, "model": {}, "model_config": {}, "vocab_size": 1, "tokenizer": torch.zeros(1)})
        run.save("best.pt", {"step": 2, "model": {}, "model_config": {}, "vocab_size": 1, "tokenizer": torch.zeros(1)})
    assert load_checkpoint(tmp_path / "run" / "last.pt")["run_config"] == identity
    with RunFolder.open(tmp_path / "run", dict(identity)) as again:
        assert again.resume and again.last == tmp_path / "run" / "last.pt"
    other = {**identity, "train.lr": 0.2}
    with pytest.raises(RunFolderError, match=r"different configuration \(train\.lr\).*overwrite=true"):
        RunFolder.open(tmp_path / "run", other)
    assert (tmp_path / "run" / "last.pt").exists()  # a refusal changes nothing
    with RunFolder.open(tmp_path / "run", other, overwrite=True) as fresh:
        assert not fresh.resume
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()


def test_a_run_folder_is_held_by_one_process_and_a_killed_holder_leaves_no_lock(tmp_path):
    folder = tmp_path / "run"
    with RunFolder.open(folder, {}):
        with pytest.raises(RunFolderError, match=rf"in use by process {os.getpid()}"):
            RunFolder.open(folder, {})
    RunFolder.open(folder, {}).close()  # released on close

    code = (
        f"from translate.checkpoint import RunFolder; r = RunFolder.open({str(folder)!r}, {{}}); "
        "print('held', flush=True); import time; time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(RunFolderError, match=rf"in use by process {holder.pid}"):
            RunFolder.open(folder, {})
    finally:
        holder.kill()
        holder.wait(timeout=30)
    RunFolder.open(folder, {}).close()  # the lock died with its process


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_a_refused_run_folder_is_left_byte_for_byte_as_it_was(tmp_path):
    folder = tmp_path / "run"
    with RunFolder.open(folder, {"train.lr": 0.1}) as run:
        run.save("last.pt", {"step": 3, "model": {}, "model_config": {}, "vocab_size": 1, "tokenizer": torch.zeros(1)})
    before = _snapshot(folder)
    assert ".lock" in before and before[".lock"][0]  # the lock file names its last holder
    with pytest.raises(RunFolderError, match="different configuration"):
        RunFolder.open(folder, {"train.lr": 0.2})
    assert _snapshot(folder) == before


def test_a_new_run_folder_that_never_saved_is_removed_again(tmp_path):
    with pytest.raises(KeyError), RunFolder.open(tmp_path / "new", {}):
        raise KeyError("the corpus could not be read")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    RunFolder.open(tmp_path / "old", {}).close()
    assert (tmp_path / "old").is_dir()  # a folder that was there before stays
