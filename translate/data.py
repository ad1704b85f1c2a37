"""Parallel corpora: from the Hugging Face hub, a local copy in its layout, or plain text.

Three sources, one result (:class:`Corpus`: aligned source and target lines per split):

* ``data.hub_id`` with no ``data.path``: ``datasets.load_dataset(hub_id)``;
* ``data.path`` pointing at a folder in the hub layout (``train.jsonl`` ...): the same
  ``load_dataset`` call on the folder;
* ``data.path`` pointing at plain text files ``<prefix>.<lang>``, one sentence per line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from translate.batching import Examples
from translate.config import DataConfig
from translate.textfile import LineError, has_text, iter_lines
from translate.tokenizer import Tokenizer, load_or_train

log = logging.getLogger(__name__)

HUB_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")


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


def read_parallel(src_path: Path, tgt_path: Path) -> Split:
    for p in (src_path, tgt_path):
        if not p.is_file():
            raise DataError(f"missing corpus file {p}")
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: parallel files must align line by line"
        )
    return Split(src, tgt)


def _text_corpus(cfg: DataConfig) -> Corpus:
    root = Path(cfg.path)

    def split(prefix: str) -> Split:
        return read_parallel(root / f"{prefix}.{cfg.src_lang}", root / f"{prefix}.{cfg.tgt_lang}")

    return Corpus(split(cfg.train_prefix), split(cfg.valid_prefix), split(cfg.test_prefix))


def first_line(err: BaseException, width: int = 300) -> str:
    return (str(err).splitlines() or [""])[0][:width]


def _hub_corpus(cfg: DataConfig) -> Corpus:
    source = cfg.path if cfg.path else cfg.hub_id
    if not source:
        raise DataError("set data.path (a local folder) or data.hub_id (a hub dataset)")
    offline = None if cfg.path else hub_unreachable()
    if offline:
        _go_offline()  # the local cache may still hold it; no 20 s of retries first
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        ds = datasets.load_dataset(source)
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

    def split(name: str) -> Split:
        if name not in ds:
            raise DataError(f"dataset '{source}' has no split '{name}' (it has {sorted(ds)})")
        part = ds[name]
        for lang in (cfg.src_lang, cfg.tgt_lang):
            if lang not in part.column_names:
                raise MissingLanguage(f"dataset '{source}' has no '{lang}' column (it has {part.column_names})")
        return Split(list(part[cfg.src_lang]), list(part[cfg.tgt_lang]))

    return Corpus(split(cfg.train_split), split(cfg.valid_split), split(cfg.test_split))


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
    """Tokenize a split, dropping empty pairs and pairs over `max_len` subwords (counted in the log)."""
    src, tgt = tokenizer.encode(split.src), tokenizer.encode(split.tgt)
    keep = [i for i in range(len(src)) if src[i] and tgt[i] and len(src[i]) <= max_len and len(tgt[i]) <= max_len]
    empty = sum(1 for s, t in zip(src, tgt) if not s or not t)
    if len(keep) < len(src):
        log.info(
            "dropped %d of %d pairs: %d empty, %d over %d subwords",
            len(src) - len(keep),
            len(src),
            empty,
            len(src) - len(keep) - empty,
            max_len,
        )
    if not keep:
        raise DataError(
            f"no usable training pair: all {len(src)} are empty on a side or longer than data.max_len={max_len} "
            "subwords; check the corpus or raise data.max_len"
        )
    return Examples([src[i] for i in keep], [tgt[i] for i in keep])


def prepare(cfg: DataConfig) -> tuple[Corpus, Tokenizer]:
    """The corpus and its joint SentencePiece model (trained once, kept in data/<name>/)."""
    corpus = load_corpus(cfg)
    if not any(map(has_text, corpus.train.src)) and not any(map(has_text, corpus.train.tgt)):
        raise DataError(
            f"the training split of {cfg.path or cfg.hub_id} ({cfg.src_lang}-{cfg.tgt_lang}) holds no text: "
            "every line is empty or blank"
        )
    langs = "-".join(sorted((cfg.src_lang, cfg.tgt_lang)))
    path = Path(cfg.artefacts) / cfg.name / f"spm.{langs}.{cfg.spm_model_type}{cfg.vocab_size}.model"
    tokenizer = load_or_train(
        path,
        corpus.train.src + corpus.train.tgt,
        vocab_size=cfg.vocab_size,
        model_type=cfg.spm_model_type,
        byte_fallback=cfg.byte_fallback,
    )
    return corpus, tokenizer


def _has_hub_layout(folder: Path) -> bool:
    return any(p.suffix in HUB_SUFFIXES for p in folder.iterdir())


def load_corpus(cfg: DataConfig) -> Corpus:
    """Read train/valid/test for ``cfg.src_lang`` -> ``cfg.tgt_lang`` from the configured source.

    ``format=auto`` with a local folder reads it through ``load_dataset`` when it holds
    hub-layout files with both languages, and as plain text files otherwise (Multi30k's
    fr and cs, for example, exist only as text).
    """
    if cfg.path is not None and not Path(cfg.path).is_dir():
        raise DataError(f"data.path={cfg.path} is not a folder")
    if cfg.format == "text" or (cfg.format == "auto" and cfg.path and not _has_hub_layout(Path(cfg.path))):
        if cfg.path is None:
            raise DataError("data.format=text needs data.path")
        fmt, corpus = "text", _text_corpus(cfg)
    else:
        try:
            fmt, corpus = "hub", _hub_corpus(cfg)
        except MissingLanguage:
            if cfg.format == "hub" or cfg.path is None:
                raise
            fmt, corpus = "text", _text_corpus(cfg)
    log.info(
        "corpus: %s (%s layout) %s-%s: train %d, valid %d, test %d pairs",
        cfg.path or cfg.hub_id,
        fmt,
        cfg.src_lang,
        cfg.tgt_lang,
        len(corpus.train),
        len(corpus.valid),
        len(corpus.test),
    )
    return corpus
