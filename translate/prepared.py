"""The training split as subword ids on disk: tokenized once, memory-mapped, read per batch.

    data/<name>/spm.<langs>.<type><vocab>.<key>.model   the joint SentencePiece model
    data/<name>/prepared/<src>-<tgt>.<key>/              the training pairs as ids
        src.bin, tgt.bin   ids pair after pair, no specials (uint16; uint32 past 65,536 pieces)
        lengths.npy        (pairs, 2) int32: the source and target length of every pair
        meta.json          what the folder was made from; a folder is complete once it is there

Both are keyed by content: the SentencePiece model by the training data's fingerprint
(:meth:`translate.data.Source.fingerprint`) and its own settings, the ids by that
fingerprint, the direction and the SentencePiece model's bytes. A changed corpus or
tokenizer gets new files, never the old ones; the run folder records the same
fingerprint and refuses to resume on other data (translate/cli.py).

Building streams the corpus in chunks, tokenizes each with SentencePiece on every core,
appends the ids to the files and renames the finished folder into place, so a crash
leaves nothing half-made that could be read. Memory stays bounded: SentencePiece trains
on a random sample (``data.spm_sample`` sentences); opening a prepared split reads the
length arrays only, and the ids of a batch are read from the memory map when the batch
is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from translate.batching import Batch, batch_of_rows, gather, lengths_of, token_batches
from translate.config import DataConfig
from translate.data import DataError, Source, digest, open_source, usable
from translate.textfile import has_text
from translate.tokenizer import Tokenizer, load_or_train

log = logging.getLogger(__name__)

FORMAT = 1  # of the prepared folder; a new layout gets a new number (and so new keys)


def prepare(
    cfg: DataConfig, *, source: Source | None = None, progress: bool = True
) -> tuple[Tokenizer, TokenizedPairs]:
    """The joint SentencePiece model and the tokenized training pairs, built where missing."""
    source = source or open_source(cfg)
    folder = Path(cfg.artefacts) / cfg.name
    tokenizer = tokenizer_for(cfg, source, folder)
    tokenizer_sha1 = hashlib.sha1(tokenizer.model_bytes).hexdigest()
    key = digest(FORMAT, source.fingerprint(), cfg.src_lang, cfg.tgt_lang, tokenizer_sha1)
    where = folder / "prepared" / f"{cfg.src_lang}-{cfg.tgt_lang}.{key}"
    if complete(where):
        log.info("tokenized training pairs: %s (reused)", where)
    else:
        build(source, tokenizer, where, extra={"tokenizer_sha1": tokenizer_sha1}, progress=progress)
    return tokenizer, TokenizedPairs(where, max_len=cfg.max_len)


def tokenizer_for(cfg: DataConfig, source: Source, folder: Path) -> Tokenizer:
    """The SentencePiece model of this training data and these settings: reused, or trained on a sample."""
    settings = (cfg.spm_model_type, cfg.vocab_size, cfg.byte_fallback, cfg.spm_sample)
    langs = "-".join(sorted((cfg.src_lang, cfg.tgt_lang)))
    key = digest(source.fingerprint(), *settings)[:10]
    path = folder / f"spm.{langs}.{cfg.spm_model_type}{cfg.vocab_size}.{key}.model"
    if not path.exists() and not any(map(has_text, _sentences(source))):
        raise DataError(
            f"the training split of {source.name} ({cfg.src_lang}-{cfg.tgt_lang}) holds no text: "
            "every line is empty or blank"
        )
    found: list[DataError] = []

    def sentences():
        try:
            yield from _sentences(source)
        except DataError as err:  # SentencePiece would report it as its own internal error
            found.append(err)
            raise

    try:
        return load_or_train(
            path,
            sentences(),
            vocab_size=cfg.vocab_size,
            model_type=cfg.spm_model_type,
            byte_fallback=cfg.byte_fallback,
            seed_sentences=cfg.spm_sample,
        )
    except RuntimeError:
        if found:
            raise found[0] from None
        raise


def _sentences(source: Source):
    """Both sides of the training split, streamed."""
    for chunk in source.chunks():
        yield from chunk.src
        yield from chunk.tgt


def complete(where: Path) -> bool:
    """A prepared folder whose files are all there, with the sizes its meta.json promises."""
    try:
        meta = json.loads((where / "meta.json").read_text())
        width = np.dtype(meta["dtype"]).itemsize
        return (
            meta["format"] == FORMAT
            and (where / "src.bin").stat().st_size == meta["tokens"][0] * width
            and (where / "tgt.bin").stat().st_size == meta["tokens"][1] * width
            and (where / "lengths.npy").is_file()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build(source: Source, tokenizer: Tokenizer, where: Path, *, extra: dict, progress: bool = True) -> None:
    """Tokenize the training split into `where` (see the module docstring), chunk by chunk;
    `extra` joins what meta.json records."""
    from tqdm import tqdm

    where.parent.mkdir(parents=True, exist_ok=True)
    _remove_unfinished(where)
    tmp = where.with_name(f"{where.name}.tmp{os.getpid()}")
    tmp.mkdir()
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    threads = len(os.sched_getaffinity(0))
    start, lengths, tokens = time.perf_counter(), [], [0, 0]
    log.info("tokenizing the training split of %s on %d threads -> %s", source.name, threads, where)
    try:
        with (
            open(tmp / "src.bin", "wb") as src_file,
            open(tmp / "tgt.bin", "wb") as tgt_file,
            tqdm(total=source.size("train"), desc="tokenize", unit=" pairs", disable=None if progress else True) as bar,
        ):
            for chunk in source.chunks("train"):
                pair = []
                for side, (f, text) in enumerate(((src_file, chunk.src), (tgt_file, chunk.tgt))):
                    ids = tokenizer.encode(text, threads=threads)
                    flat = np.fromiter(chain.from_iterable(ids), dtype=dtype)
                    f.write(flat.tobytes())
                    tokens[side] += len(flat)
                    pair.append(lengths_of(ids))
                lengths.append(np.stack(pair, axis=1).astype(np.int32))
                bar.update(len(chunk))
        table = np.concatenate(lengths) if lengths else np.zeros((0, 2), dtype=np.int32)
        np.save(tmp / "lengths.npy", table)
        meta = {
            "format": FORMAT,
            "corpus": source.name,
            "fingerprint": source.fingerprint(),
            "direction": f"{source.cfg.src_lang}-{source.cfg.tgt_lang}",
            **extra,
            "pairs": len(table),
            "tokens": tokens,
            "dtype": np.dtype(dtype).name,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(tmp, where)
        except OSError:  # another process finished the same folder first
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    log.info("tokenized %d pairs (%d + %d subwords) in %.0f s", len(table), *tokens, seconds)


def _remove_unfinished(where: Path) -> None:
    """An incomplete folder at `where`, and temporary folders of builds whose process is gone."""
    if where.exists():
        log.warning("%s is incomplete (an interrupted or damaged build): building it again", where)
        shutil.rmtree(where)
    for tmp in where.parent.glob(f"{where.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TokenizedPairs:
    """A prepared training split: the length arrays in memory, the ids memory-mapped.

    Pairs that are empty on a side or longer than `max_len` subwords on either are left
    out here (counted in the log), so one prepared folder serves every data.max_len.
    Indices, as in :class:`translate.batching.Examples`, count the kept pairs."""

    def __init__(self, where: Path, *, max_len: int) -> None:
        self.where = Path(where)
        meta = json.loads((self.where / "meta.json").read_text())
        table = np.load(self.where / "lengths.npy")  # (N, 2) int32
        starts = np.zeros((2, len(table) + 1), dtype=np.int64)
        np.cumsum(table.T, axis=1, out=starts[:, 1:])
        keep = usable(table[:, 0], table[:, 1], max_len)
        self.src_lengths, self.tgt_lengths = table[keep, 0].astype(np.int64), table[keep, 1].astype(np.int64)
        self.src_starts, self.tgt_starts = starts[0, keep], starts[1, keep]
        self.src_ids = np.memmap(self.where / "src.bin", dtype=meta["dtype"], mode="r")
        self.tgt_ids = np.memmap(self.where / "tgt.bin", dtype=meta["dtype"], mode="r")
        self.fingerprint = meta["fingerprint"]

    def __len__(self) -> int:
        return len(self.src_lengths)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return self.src_lengths, self.tgt_lengths

    def batch(self, index) -> Batch:
        """The batch of the kept pairs `index` (an index array), read from the memory map."""
        i = np.asarray(index, dtype=np.int64)
        src_len, tgt_len = self.src_lengths[i], self.tgt_lengths[i]
        src = gather(self.src_ids, self.src_starts[i], src_len)
        tgt = gather(self.tgt_ids, self.tgt_starts[i], tgt_len)
        return batch_of_rows(src, src_len, tgt, tgt_len)

    def batches(self, *, batch_tokens: int, generator: torch.Generator | None = None) -> list[np.ndarray]:
        """Index arrays of token-budget batches (see :func:`translate.batching.token_batches`)."""
        return token_batches(self.src_lengths, self.tgt_lengths, batch_tokens=batch_tokens, generator=generator)
