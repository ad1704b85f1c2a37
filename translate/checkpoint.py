"""Self-describing checkpoints, written atomically and loaded without executing code.

A checkpoint is one file holding plain data and tensors only:

    format_version   int
    model_config     dict (ModelConfig fields)
    vocab_size       int
    tokenizer        uint8 tensor (the SentencePiece model bytes)
    model            state_dict
    step, epoch      int
    metrics          dict of floats
    train_state      dict (optimizer, scheduler, RNG, data position) or absent

It is read with ``torch.load(weights_only=True)``, whose unpickler refuses anything but
tensors and primitive containers, so a crafted file cannot run code.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import stat
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import torch

FORMAT_VERSION = 1

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A model file that cannot be used; the message says why."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temporary binary file beside `path`, then rename it over `path`.

    For regular files (and new ones): a replaced file keeps its mode, a new one gets the
    umask's; a symlink's target is what gets replaced, the link stays. The folder must exist."""
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically save `payload` (see module docstring) with the current format version."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; every failure becomes a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no model file at {path}")
    verify_archive(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds a pickled object{what} besides tensors and plain data, so it was refused: loading "
            "it could run code. A translate model file never holds one; do not use this file."
        ) from None
    except Exception as err:  # torch raises many kinds on damaged files: zip, key, EOF, runtime
        raise CheckpointError(
            f"{path} is truncated or corrupted ({type(err).__name__}): not a usable translate model file"
        ) from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path} is not a translate model file (no format_version)")
    version = ckpt["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has format version {version!r}, which no translate writes: a damaged file")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this translate reads "
            f"({FORMAT_VERSION}): upgrade translate"
        )
    for key in ("model_config", "vocab_size", "tokenizer", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks '{key}': not a complete translate model file")
    check_weights(path, ckpt["model"])
    return ckpt


def verify_archive(path: Path) -> None:
    """Check every part of the file against the checksum the zip archive stores (torch.load does not)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{path} is truncated or corrupted ({err}): not a usable translate model file") from None
    if bad is not None:
        raise CheckpointError(
            f"{path} is damaged: its part '{bad}' does not match its checksum (the file changed after it was "
            "written, e.g. a bad disk or copy); use another copy of the model"
        )


def check_weights(path: Path, state: dict[str, Any]) -> None:
    """Refuse weights that hold NaN or infinite values: such a model translates into garbage or nothing."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model' is not a table of weights: not a translate model file")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: weight '{name}' is not a tensor: not a translate model file")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path}: weight '{name}' holds NaN or infinite values (a diverged run or a damaged file); "
                "use another checkpoint"
            )


def model_payload(model, tokenizer) -> dict[str, Any]:
    """What inference needs from a model (a Seq2Seq) and its tokenizer, as plain data."""
    return {
        "model_config": asdict(model.cfg),
        "vocab_size": model.vocab_size,
        "tokenizer": bytes_tensor(tokenizer.model_bytes),
        "model": model.state_dict(),
    }


def tokenizer_bytes(ckpt: dict[str, Any]) -> bytes:
    return ckpt["tokenizer"].numpy().tobytes()


def bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked; the message says what to do."""


class RunFolder:
    """A training run's folder: ``last.pt`` (state to resume from) and ``best.pt``.

    :meth:`open` decides, before any work, what starting a run there means: a new run, a
    resume from ``last.pt`` (same configuration), a refusal (another configuration), or a
    fresh start over the old run (``overwrite``). The main process holds an OS lock on
    ``.lock`` while the folder is open, so a second training into the same folder is
    refused; the lock dies with its process, so a killed run leaves none behind.
    Saves are atomic: a crash leaves the previous file whole.
    """

    def __init__(
        self, path: Path, identity: dict[str, Any], *, is_main: bool, last: dict | None, lock, created: bool = False
    ) -> None:
        self.path, self.identity, self.is_main = path, identity, is_main
        self._created = created  # made by this open: removed again if the run never saved anything
        self._last = last  # the last.pt to resume from, as read by open(); None for a new run
        self._lock = lock

    @property
    def resume(self) -> bool:
        return self._last is not None

    @property
    def resume_step(self) -> int | None:
        """The step of the last.pt this run resumes from; None for a new run."""
        return None if self._last is None else int(self._last.get("step", 0))

    @property
    def resume_model_config(self) -> dict[str, Any] | None:
        """The model configuration of the last.pt this run resumes from; None for a new run."""
        return None if self._last is None else self._last.get("model_config")

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    def take_last(self) -> dict[str, Any]:
        """The checkpoint to resume from (read once, by open) and handed over once."""
        ckpt, self._last = self._last, None
        if ckpt is None:
            raise RunFolderError(f"{self.path} holds no run to resume")
        return ckpt

    @classmethod
    def open(
        cls,
        path: str | Path,
        identity: dict[str, Any],
        *,
        overwrite: bool = False,
        is_main: bool = True,
        sync: Callable[[], None] = lambda: None,
    ) -> RunFolder:
        """Open `path` for a run of configuration `identity` (plain data).

        Under torchrun every process calls this; `sync` (a barrier) lets them all read
        ``last.pt`` before the main process may discard it."""
        path = Path(path)
        created = is_main and not path.exists()
        lock = _lock(path) if is_main else None
        try:
            if is_main:
                _remove_leftovers(path)
            last = load_checkpoint(path / "last.pt") if (path / "last.pt").exists() else None
            previous = last.get("run_config", {}) if last is not None else None
            sync()
            resume = previous is not None and not overwrite
            if previous is not None and overwrite:
                log.warning("overwrite=true: discarding the run in %s", path)
                if is_main:
                    for name in ("last.pt", "best.pt"):
                        (path / name).unlink(missing_ok=True)
            elif resume and (changed := _changed(previous, identity)):
                data = " (data_fingerprint: the training data is not the data this run trained on)"
                raise RunFolderError(
                    f"{path} holds a run with a different configuration ({', '.join(changed[:8])})"
                    f"{data if 'data_fingerprint' in changed else ''}. "
                    "Choose another run_dir=..., or pass overwrite=true to replace it."
                )
        except BaseException:
            if lock is not None:
                lock.close()
                _remove_if_unused(path, created)
            raise
        if lock is not None:
            _say_holder(lock)
        return cls(path, identity, is_main=is_main, last=last if resume else None, lock=lock, created=created)

    def save(self, name: str, payload: dict[str, Any]) -> None:
        """Atomically write `name` (best.pt or last.pt) with the run's configuration; main process only.

        A failure (a full disk, a read-only folder) leaves the previous file whole and
        becomes a CheckpointError that says so."""
        if not self.is_main:
            return
        try:
            save_checkpoint(self.path / name, {**payload, "run_config": self.identity})
        except OSError as err:
            raise CheckpointError(
                f"could not save {self.path / name}: {err.strerror or err}. The previous {name}, if any, is "
                "kept whole; make room (or fix the folder) and run the same command again to resume from it"
            ) from None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the lock
            self._lock = None
            _remove_if_unused(self.path, self._created)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _changed(previous: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """Keys whose values differ. A key only one side records is not compared: one the earlier run
    did not record (an older translate), or one this configuration leaves out (a setting left
    unset, which a resumed run takes from its own last.pt; a key translate no longer has)."""
    return sorted(k for k in set(previous) & set(identity) if previous[k] != identity[k])


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of saves that a killed run never finished (we hold the folder's lock)."""
    for tmp in folder.glob(".*.pt.*.tmp"):
        log.info("removing %s, left by an interrupted save", tmp)
        tmp.unlink(missing_ok=True)


def _remove_if_unused(folder: Path, created: bool) -> None:
    """A folder this run made and left with nothing but its lock (it failed before the first
    save) is removed, so a failed start leaves no empty run behind."""
    if created and [p.name for p in folder.iterdir()] == [".lock"]:
        (folder / ".lock").unlink(missing_ok=True)
        folder.rmdir()


def _lock(folder: Path):
    """Hold an exclusive, non-blocking flock on folder/.lock; refuse if another process holds it.

    Returns the open file: closing it releases the lock."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunFolderError(
            f"{folder} is in use by {holder}: wait for it to finish, stop it, or choose another run_dir=..."
        ) from None
    return f


def _say_holder(lock) -> None:
    """Name this process in the held .lock (once the folder is accepted: a refusal changes nothing)."""
    lock.seek(0)
    lock.truncate()
    lock.write(f"process {os.getpid()} on {os.uname().nodename}\n")
    lock.flush()
