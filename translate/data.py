"""Parallel corpora: from the Hugging Face hub, a local copy in its layout, or plain text.

Three sources, one interface (:class:`Source`, made by :func:`open_source`):

* ``data.hub_id`` with no ``data.path``: ``datasets.load_dataset(hub_id)``;
* ``data.path`` pointing at a folder in the hub layout (``train.jsonl`` ...): the same
  ``load_dataset`` call on the folder (Arrow tables, memory-mapped by ``datasets``);
* ``data.path`` pointing at plain text files ``<prefix>.<lang>``, one sentence per line.

A source reads a split whole (validation, test: :class:`Split`) or streams it in chunks
(the training split, which may hold millions of pairs: never whole in memory), and gives
a fingerprint of the training data's content, which keys everything derived from it
(translate/prepared.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np

from translate.batching import Examples, lengths_of
from translate.config import DataConfig
from translate.textfile import LineError, count_lines, iter_lines
from translate.tokenizer import Tokenizer

log = logging.getLogger(__name__)

HUB_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
CHUNK = 50_000  # pairs per streamed chunk
SPLITS = ("train", "valid", "test")


class DataError(RuntimeError):
    """A corpus that cannot be read as asked; the message says what to do."""


class MissingLanguage(DataError):
    """The hub-layout dataset has no column for a requested language."""


@dataclass
class Split:
    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class Corpus:
    train: Split
    valid: Split
    test: Split


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file, without line terminators; a bad byte names its line."""
    with open(path, "rb") as f:
        try:
            return list(iter_lines(f, str(path)))
        except LineError as err:
            raise DataError(str(err)) from None


def stream_parallel(src_path: Path, tgt_path: Path) -> Iterator[tuple[str, str]]:
    """The aligned lines of two text files, read as a stream (one line of each at a time).

    A bad byte names its file and line; files of different lengths name both files,
    their line counts and the first line without a partner."""
    for p in (src_path, tgt_path):
        if not p.is_file():
            raise DataError(f"missing corpus file {p}")
    with open(src_path, "rb") as fs, open(tgt_path, "rb") as ft:
        pairs = zip_longest(iter_lines(fs, str(src_path)), iter_lines(ft, str(tgt_path)))
        number = 0
        try:
            for number, (src, tgt) in enumerate(pairs, 1):
                if src is None or tgt is None:
                    longer = ft if src is None else fs
                    rest = number + sum(1 for _ in longer)  # the longer file's count, for the message
                    counts = (number - 1, rest) if src is None else (rest, number - 1)
                    raise DataError(
                        f"{src_path} has {counts[0]} lines but {tgt_path} has {counts[1]}: parallel files must "
                        f"align line by line (line {number} of {tgt_path if src is None else src_path} has no "
                        "partner)"
                    )
                yield src, tgt
        except LineError as err:
            raise DataError(str(err)) from None


def chunked(pairs: Iterator[tuple[str, str]], size: int) -> Iterator[Split]:
    src: list[str] = []
    tgt: list[str] = []
    for s, t in pairs:
        src.append(s)
        tgt.append(t)
        if len(src) == size:
            yield Split(src, tgt)
            src, tgt = [], []
    if src:
        yield Split(src, tgt)


def file_digest(path: Path, block: int = 1 << 20) -> str:
    """sha1 of a file's bytes, read in blocks (about 1 GB/s)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()


def digest(*parts: object) -> str:
    """A short key (16 hex digits) for the given parts."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


class Source:
    """One parallel corpus for ``cfg.src_lang`` -> ``cfg.tgt_lang``, opened once."""

    layout = ""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self._fingerprint: str | None = None
        self._sizes: dict[str, int] = {}

    @property
    def name(self) -> str:
        return self.cfg.path or self.cfg.hub_id or ""

    def split(self, which: str) -> Split:
        """A whole split (train, valid or test) in memory."""
        parts = list(self.chunks(which))
        return Split([s for p in parts for s in p.src], [t for p in parts for t in p.tgt])

    def head(self, which: str, n: int | None) -> Split:
        """The first `n` pairs of a split (all when None), read no further."""
        if n is None:
            return self.split(which)
        return next(iter(self.chunks(which, size=n)), Split([], []))

    def chunks(self, which: str = "train", size: int | None = None) -> Iterator[Split]:
        """A split streamed in chunks of `size` pairs (CHUNK when None)."""
        raise NotImplementedError

    def size(self, which: str) -> int:
        """Pairs in a split (lines of the source file for text), counted once."""
        if which not in self._sizes:
            self._sizes[which] = self._count(which)
        return self._sizes[which]

    def _count(self, which: str) -> int:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A key of the training data's content and the language pair (direction-free), computed once."""
        if self._fingerprint is None:
            self._fingerprint = self._content_key()
        return self._fingerprint

    def _content_key(self) -> str:
        raise NotImplementedError


class TextSource(Source):
    """Plain text files ``<path>/<prefix>.<lang>``, streamed line by line."""

    layout = "text"

    def files(self, which: str) -> tuple[Path, Path]:
        prefix = {"train": self.cfg.train_prefix, "valid": self.cfg.valid_prefix, "test": self.cfg.test_prefix}[which]
        root = Path(self.cfg.path)
        return root / f"{prefix}.{self.cfg.src_lang}", root / f"{prefix}.{self.cfg.tgt_lang}"

    def chunks(self, which: str = "train", size: int | None = None) -> Iterator[Split]:
        return chunked(stream_parallel(*self.files(which)), size or CHUNK)

    def _count(self, which: str) -> int:
        src = self.files(which)[0]
        return count_lines(src) if src.is_file() else 0

    def _content_key(self) -> str:
        files = sorted(zip((self.cfg.src_lang, self.cfg.tgt_lang), self.files("train")))
        for _, path in files:
            if not path.is_file():
                raise DataError(f"missing corpus file {path}")
        return digest("text", *(f"{lang}:{path.stat().st_size}:{file_digest(path)}" for lang, path in files))


class HubSource(Source):
    """A dataset read by ``datasets.load_dataset``: from the hub, or a local folder in its layout."""

    layout = "hub"

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.dataset = _load_dataset(cfg)
        self.part("train")  # a missing split or language is found now

    def part(self, which: str):
        cfg = self.cfg
        name = {"train": cfg.train_split, "valid": cfg.valid_split, "test": cfg.test_split}[which]
        if name not in self.dataset:
            raise DataError(f"dataset '{self.name}' has no split '{name}' (it has {sorted(self.dataset)})")
        part = self.dataset[name]
        for lang in (cfg.src_lang, cfg.tgt_lang):
            if lang not in part.column_names:
                raise MissingLanguage(f"dataset '{self.name}' has no '{lang}' column (it has {part.column_names})")
        return part

    def chunks(self, which: str = "train", size: int | None = None) -> Iterator[Split]:
        src, tgt = self.cfg.src_lang, self.cfg.tgt_lang
        for rows in self.part(which).select_columns([src, tgt]).iter(batch_size=size or CHUNK):
            yield Split([s or "" for s in rows[src]], [t or "" for t in rows[tgt]])

    def _count(self, which: str) -> int:
        return self.part(which).num_rows

    def _content_key(self) -> str:
        langs = sorted((self.cfg.src_lang, self.cfg.tgt_lang))
        if self.cfg.path:  # a local folder: the bytes of its data files
            files = sorted(p for p in Path(self.cfg.path).rglob("*") if p.suffix in HUB_SUFFIXES and p.is_file())
            root = Path(self.cfg.path)
            return digest("hub-folder", *langs, *(f"{p.relative_to(root)}:{file_digest(p)}" for p in files))
        return digest("hub", *langs, self.cfg.train_split, self.part("train")._fingerprint)  # hub revision


def _load_dataset(cfg: DataConfig):
    source = cfg.path if cfg.path else cfg.hub_id
    if not source:
        raise DataError("set data.path (a local folder) or data.hub_id (a hub dataset)")
    offline = None if cfg.path else hub_unreachable()
    if offline:
        _go_offline()  # the local cache may still hold it; no 20 s of retries first
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        return datasets.load_dataset(source)
    except Exception as err:  # the hub unreachable, a name it does not know, a file it cannot parse
        if cfg.path:
            raise DataError(
                f"could not read the dataset in {source} ({type(err).__name__}: {first_line(err)}): "
                "check its files (one JSON object per line for .jsonl), or use plain <split>.<lang> text files "
                "with data.format=text"
            ) from None
        why = (
            f"the Hugging Face hub cannot be reached from this machine ({offline}) and '{source}' is not in "
            "its local cache"
            if offline
            else f"could not load dataset '{source}' ({type(err).__name__}: {first_line(err)})"
        )
        raise DataError(f"{why}. {_local_copy_hint(cfg)}") from None


def open_source(cfg: DataConfig) -> Source:
    """The configured corpus, opened (nothing read yet but the hub's tables).

    ``format=auto`` with a local folder reads it through ``load_dataset`` when it holds
    hub-layout files with both languages, and as plain text files otherwise (Multi30k's
    fr and cs, for example, exist only as text).
    """
    if cfg.path is not None and not Path(cfg.path).is_dir():
        raise DataError(f"data.path={cfg.path} is not a folder")
    if cfg.format == "text" or (cfg.format == "auto" and cfg.path and not _has_hub_layout(Path(cfg.path))):
        if cfg.path is None:
            raise DataError("data.format=text needs data.path")
        return TextSource(cfg)
    try:
        return HubSource(cfg)
    except MissingLanguage:
        if cfg.format == "hub" or cfg.path is None:
            raise
        return TextSource(cfg)


def _has_hub_layout(folder: Path) -> bool:
    return any(p.suffix in HUB_SUFFIXES for p in folder.iterdir())


def describe(source: Source) -> None:
    """The log line naming the corpus and the sizes of its splits."""
    cfg = source.cfg
    log.info(
        "corpus: %s (%s layout) %s-%s: train %d, valid %d, test %d pairs",
        source.name, source.layout, cfg.src_lang, cfg.tgt_lang,
        *(source.size(which) for which in SPLITS),
    )  # fmt: skip


def load_corpus(cfg: DataConfig) -> Corpus:
    """All three splits of the configured corpus in memory (for small corpora: tests, the study)."""
    source = open_source(cfg)
    describe(source)
    return Corpus(*(source.split(which) for which in SPLITS))


def load_split(cfg: DataConfig, which: str) -> Split:
    """One split (valid or test) in memory; the training split is streamed (translate/prepared.py)."""
    return open_source(cfg).split(which)


def first_line(err: BaseException, width: int = 300) -> str:
    return (str(err).splitlines() or [""])[0][:width]


def _local_copy_hint(cfg: DataConfig) -> str:
    """How to train from files of one's own instead, in the terms of this configuration."""
    files = ", ".join(
        f"{prefix}.{lang}"
        for prefix in (cfg.train_prefix, cfg.valid_prefix, cfg.test_prefix)
        for lang in (cfg.src_lang, cfg.tgt_lang)
    )
    return (
        f"To train from local files, put them in a folder and pass data.path=FOLDER: either plain text, one "
        f"sentence per line ({files}), or a copy of the dataset in the hub's layout (train.jsonl, ...; "
        "from `hf download ID --repo-type dataset --local-dir FOLDER` on a connected machine)"
    )


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (no name lookup or connection within
    `timeout` seconds), or None when it can, when offline mode is already set, or when a
    proxy is configured (datasets then goes through it)."""
    import os
    import socket
    import threading
    from urllib.parse import urlsplit

    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in offline):
        return None
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    where = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection(where, timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{where[0]}:{where[1]}: {err.strerror or err}")

    probe = threading.Thread(target=connect, daemon=True)  # a name lookup has no timeout of its own
    probe.start()
    probe.join(timeout + 1)
    return outcome[0] if outcome else f"{where[0]}:{where[1]}: no answer within {timeout:g} s"


def _go_offline() -> None:
    """datasets reads the local cache only, from now on in this process."""
    import os
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    if "datasets" in sys.modules:  # imported already: its settings were read at import
        import datasets.config
        import huggingface_hub.constants

        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
        huggingface_hub.constants.HF_HUB_OFFLINE = True


def tokenize_pairs(split: Split, tokenizer: Tokenizer, max_len: int) -> Examples:
    """Tokenize a split in memory, keeping the :func:`usable` pairs."""
    src, tgt = tokenizer.encode(split.src), tokenizer.encode(split.tgt)
    keep = usable(lengths_of(src), lengths_of(tgt), max_len).tolist()
    return Examples([src[i] for i in keep], [tgt[i] for i in keep])


def usable(src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Indices of the pairs with subwords on both sides and at most `max_len` on each; the
    others are counted in the log, and none left is a DataError."""
    empty = (src_lengths == 0) | (tgt_lengths == 0)
    keep = np.flatnonzero(~empty & (src_lengths <= max_len) & (tgt_lengths <= max_len))
    total, dropped = len(src_lengths), len(src_lengths) - len(keep)
    if dropped:
        n_empty = int(empty.sum())
        log.info("dropped %d of %d pairs: %d empty, %d over %d subwords", dropped, total, n_empty,
                 dropped - n_empty, max_len)  # fmt: skip
    if not len(keep):
        raise DataError(
            f"no usable training pair: all {total} are empty on a side or longer than data.max_len={max_len} "
            "subwords; check the corpus or raise data.max_len"
        )
    return keep
