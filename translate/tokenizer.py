"""Joint SentencePiece subwords (Kudo & Richardson 2018) over source and target text.

The model is kept as bytes, so a checkpoint can carry it and inference needs one file.
Special ids are fixed: pad 0, unk 1, bos 2, eos 3.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from translate.checkpoint import atomic_write_bytes
from translate.config import ConfigError

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    """Text <-> subword ids, from a serialized SentencePiece model."""

    def __init__(self, model_bytes: bytes) -> None:
        self.model_bytes = bytes(model_bytes)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD, UNK, BOS, EOS):
            raise ValueError("SentencePiece model must use pad=0 unk=1 bos=2 eos=3; retrain it with translate")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: Sequence[str], *, threads: int = 1) -> list[list[int]]:
        """Subword ids of each text (no specials); `threads` > 1 encodes in parallel, in C++."""
        return self.sp.encode(list(texts), out_type=int, num_threads=threads)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.sp.decode([[i for i in seq if i > EOS] for seq in ids])

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(Path(path).read_bytes())


def train_tokenizer(
    sentences: Iterable[str],
    *,
    vocab_size: int,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    seed_sentences: int = 2_000_000,
) -> Tokenizer:
    """Train a joint SentencePiece model on `sentences` (source and target text together)."""
    buf = io.BytesIO()
    try:
        _train(buf, sentences, vocab_size, model_type, byte_fallback, seed_sentences)
    except RuntimeError as err:
        found = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(err))
        if not found:
            raise
        raise ConfigError(
            f"data.vocab_size={vocab_size} is below the {found.group(2)} pieces this corpus needs for its characters"
            + (" plus 256 byte pieces (data.byte_fallback=true)" if byte_fallback else "")
            + ": raise data.vocab_size"
        ) from None
    return Tokenizer(buf.getvalue())


def _train(buf, sentences, vocab_size, model_type, byte_fallback, seed_sentences) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(s for s in sentences if s.strip()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        byte_fallback=byte_fallback,
        hard_vocab_limit=False,
        input_sentence_size=seed_sentences,
        shuffle_input_sentence=True,
        pad_id=PAD,
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        num_threads=2,
        minloglevel=2,
    )


def load_or_train(path: Path, sentences: Iterable[str], **kwargs) -> Tokenizer:
    """Reuse the SentencePiece model at `path`, or train one there."""
    if path.exists():
        log.info("SentencePiece model: %s (reused)", path)
        return Tokenizer.load(path)
    log.info("training SentencePiece (%s, %d pieces) -> %s", kwargs.get("model_type"), kwargs["vocab_size"], path)
    tok = train_tokenizer(sentences, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, tok.model_bytes)
    return tok
