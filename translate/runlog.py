"""What a command leaves in its run folder, and only once the folder is accepted.

Hydra would write ``.hydra/`` and ``<command>.log`` into the run folder before the
command has checked anything, so a refused command (a bad value, a folder that holds
another run) would still rewrite the run's files. Instead the log records are held in
memory (:class:`RunRecord`) until the command accepts its folder (:meth:`RunRecord.keep`);
only then are the configuration, the overrides and the log written there. A command
that only reads a run (``bleu``) keeps nothing in it.
"""

from __future__ import annotations

import json
import logging
import sys
from logging.handlers import MemoryHandler
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"


class RunRecord:
    """Log records of one command, buffered until :meth:`keep` names the folder they belong to."""

    def __init__(self, command: str, config_yaml: str = "", overrides: list[str] | None = None) -> None:
        self.command, self.config_yaml, self.overrides = command, config_yaml, list(overrides or [])
        self.folder: Path | None = None
        self._file: logging.FileHandler | None = None
        self._buffer = MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)
        self._buffer.setLevel(logging.INFO)
        logging.getLogger().addHandler(self._buffer)

    def keep(self, folder: str | Path) -> None:
        """Write the configuration to ``folder/.hydra/<command>/`` and the log, from its first
        record on, to ``folder/<command>.log`` (appended: a resumed run keeps its history)."""
        if self.folder is not None:
            return
        self.folder = Path(folder)
        saved = self.folder / ".hydra" / self.command
        saved.mkdir(parents=True, exist_ok=True)
        (saved / "config.yaml").write_text(self.config_yaml, encoding="utf-8")
        (saved / "overrides.yaml").write_text("".join(f"- {o}\n" for o in self.overrides), encoding="utf-8")
        self._file = logging.FileHandler(self.folder / f"{self.command}.log", mode="a", encoding="utf-8")
        self._file.setFormatter(logging.Formatter(FORMAT))
        self._buffer.setTarget(self._file)
        self._buffer.flush()
        root = logging.getLogger()
        root.removeHandler(self._buffer)
        root.addHandler(self._file)

    def file_only(self, level: int, message: str) -> None:
        """A record for the log file alone (the terminal shows the message in another form)."""
        record = logging.LogRecord("translate", level, __file__, 0, message, None, None)
        (self._file or self._buffer).handle(record)

    def close(self) -> None:
        root = logging.getLogger()
        for handler in (self._buffer, self._file):
            if handler is not None:
                root.removeHandler(handler)
        self._buffer.buffer.clear()
        if self._file is not None:
            self._file.close()


def sweep_job_name(override_dirname: str, num: int) -> str:
    """A sweep job's folder name: its swept values (``model.attention-general``), or ``job<N>``."""
    name = str(override_dirname).replace("/", "_").strip(".")
    return name or f"job{num}"


class Sweep:
    """The jobs of a Hydra multirun, and the table of their best scores at the end."""

    COLUMNS = ("valid_bleu", "valid_chrf", "valid_loss", "step", "bleu", "chrf")  # train's, then bleu's

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.folder: Path | None = None

    def add(self, folder: str, overrides: list[str], best: dict | None = None, error: str | None = None) -> None:
        self.folder = Path(folder).parent
        self.rows.append({"run_dir": folder, "overrides": " ".join(overrides), "best": best or {}, "error": error})

    @property
    def failed(self) -> int:
        return sum(1 for r in self.rows if r["error"])

    def table(self) -> str:
        columns = [c for c in self.COLUMNS if any(c in r["best"] for r in self.rows)]
        lines = ["\t".join(("run_dir", *columns, "status"))]
        for r in self.rows:
            values = [_cell(r["best"].get(c)) for c in columns]
            lines.append("\t".join((r["run_dir"], *values, f"failed: {r['error']}" if r["error"] else "done")))
        return "\n".join(lines) + "\n"

    def report(self) -> None:
        """Print the table and keep it as ``<sweep folder>/sweep.tsv``."""
        if not self.rows:
            return
        text = self.table()
        print(f"\nsweep: {len(self.rows)} jobs, {self.failed} failed; best validation scores\n{text}", end="")
        try:
            (self.folder / "sweep.tsv").write_text(text, encoding="utf-8")
            print(f"sweep table: {self.folder / 'sweep.tsv'}")
        except OSError as err:
            print(f"could not save the sweep table in {self.folder}: {err.strerror or err}", file=sys.stderr)


def _cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "" if value is None else str(value)


class MetricsLog:
    """The run's figures as it trains: ``metrics.jsonl`` (one JSON object a line, appended:
    a resumed run adds to the history, never rewrites it), ``curves.png`` (loss and BLEU
    against updates and minutes, redrawn at each validation) and, when the optional
    ``tensorboard`` package is installed, TensorBoard event files in ``tensorboard/``."""

    def __init__(self, folder: str | Path, *, enabled: bool = True) -> None:
        self.folder, self.enabled = Path(folder), enabled
        self.path = self.folder / "metrics.jsonl"
        self._records = self.read(self.folder) if enabled else []  # a resumed run's history, read once
        self._tb = _tensorboard(self.folder / "tensorboard") if enabled else None

    def add(self, kind: str, step: int, minutes: float, **figures: float) -> None:
        """Append one record: kind "train" (loss, lr, tokens_per_s) or "valid" (valid_loss, ...)."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "minutes": round(minutes, 4), **figures}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._records.append(record)
        if self._tb is not None:
            for name, value in figures.items():
                self._tb.add_scalar(f"{kind}/{name}", value, step)
            self._tb.flush()

    @staticmethod
    def read(folder: str | Path) -> list[dict]:
        """The records of the run in `folder` (none if it has no metrics.jsonl); writes nothing."""
        path = Path(folder) / "metrics.jsonl"
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def draw(self) -> None:
        """Redraw curves.png from every record so far."""
        if not self.enabled:
            return
        from translate.plots import training_curves

        training_curves(self.folder / "curves.png", self._records)


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra: pip install 'attention-translate[tensorboard]'
        return None
    return SummaryWriter(log_dir=str(folder))
