"""Lines of text in, the same number of translated lines out, in the same order.

Empty and whitespace-only lines give empty translations without touching the model;
every other line is tokenized, decoded in length-sorted batches (less padding, more
speed) and put back in its original place. Input is consumed in chunks, so a file of
any size streams through in bounded memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import torch

from translate.batching import make_batch
from translate.checkpoint import CheckpointError, load_checkpoint, tokenizer_bytes
from translate.config import DecodeConfig, ModelConfig
from translate.model import Seq2Seq
from translate.search import beam_search, greedy_search
from translate.textfile import has_text
from translate.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CHUNK_LINES = 4096  # lines read ahead and sorted by length together


class Translator:
    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer, cfg: DecodeConfig, *, max_input_len: int = 250) -> None:
        if cfg.int8:
            from translate.quantize import quantize_decoder

            model = quantize_decoder(model)
        self.model, self.tokenizer, self.cfg = model.eval(), tokenizer, cfg
        self.max_input_len = max_input_len
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str, cfg: DecodeConfig, device: str = "auto") -> Translator:
        """The model and tokenizer of a checkpoint file, on `device` (auto: cuda when there is one)."""
        return cls.from_payload(load_checkpoint(path), cfg, device=device, name=str(path))

    @classmethod
    def from_payload(cls, ckpt: dict, cfg: DecodeConfig, *, device: str = "auto", name: str) -> Translator:
        """The same from a loaded checkpoint; `name` (its file) is what errors name."""
        try:
            model = Seq2Seq(ModelConfig(**ckpt["model_config"]), ckpt["vocab_size"])
            model.load_state_dict(ckpt["model"])
        except (TypeError, ValueError, RuntimeError) as err:  # unknown keys, bad choices, mismatched tensors
            raise CheckpointError(f"{name}: its stored model does not fit this translate ({err})") from None
        try:
            tokenizer = Tokenizer(tokenizer_bytes(ckpt))
        except (TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise CheckpointError(f"{name}: its stored SentencePiece model is unusable ({err})") from None
        return cls(model.to(device_for(device)), tokenizer, cfg)

    def translate(
        self,
        lines: Iterable[str],
        *,
        first_line: int = 1,
        chunk_lines: int | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> Iterator[str]:
        """Yield exactly one translation (without newline) per input line, in order.

        Lines are read `chunk_lines` at a time (default CHUNK_LINES) and sorted by length
        within a chunk; 1 translates each line as soon as it arrives. `progress` (a progress
        bar's update) hears how many lines each decoded batch finished, before the chunk's
        lines come out in order."""
        if isinstance(lines, str):
            raise TypeError("translate() takes an iterable of lines; for one sentence pass [sentence]")
        chunk_lines = chunk_lines or CHUNK_LINES
        self._progress = progress or (lambda n: None)
        chunk: list[str] = []
        start = first_line
        for line in lines:
            chunk.append(line)
            if len(chunk) == chunk_lines:
                yield from self._translate_chunk(chunk, start)
                start += len(chunk)
                chunk = []
        if chunk:
            yield from self._translate_chunk(chunk, start)

    def _translate_chunk(self, lines: list[str], first_line: int) -> list[str]:
        out = [""] * len(lines)
        todo = [i for i, line in enumerate(lines) if has_text(line)]
        if len(todo) < len(lines):
            self._progress(len(lines) - len(todo))  # empty lines: done at once
        ids = self.tokenizer.encode([lines[i] for i in todo])
        for i, seq in zip(todo, ids):
            if len(seq) > self.max_input_len:
                log.warning(
                    "line %d: %d subwords, longer than the limit of %d; only the first %d are translated",
                    first_line + i,
                    len(seq),
                    self.max_input_len,
                    self.max_input_len,
                )
        ids = [seq[: self.max_input_len] for seq in ids]
        order = sorted(range(len(todo)), key=lambda j: len(ids[j]))
        for part in self._batches(order, ids):
            hyps = self.translate_ids([ids[j] for j in part])
            for j, text in zip(part, self.tokenizer.decode(hyps)):
                out[todo[j]] = " ".join(text.split())  # no stray newlines or control whitespace
            self._progress(len(part))
        return out

    def _batches(self, order: list[int], ids: list[list[int]]) -> Iterator[list[int]]:
        """Sentences, shortest first, in batches of at most decode.batch_size sentences and
        decode.batch_tokens beam rows x source subwords (EOS included); one sentence always goes."""
        c, part = self.cfg, []
        for j in order:
            if part and (
                len(part) == c.batch_size or (len(part) + 1) * c.beam_size * (len(ids[j]) + 1) > c.batch_tokens
            ):
                yield part
                part = []
            part.append(j)
        if part:
            yield part

    def translate_ids(self, src: list[list[int]]) -> list[list[int]]:
        """Subword ids of sentences -> subword ids of their best translations."""
        batch = make_batch(src).to(self.device)
        c = self.cfg
        if c.beam_size == 1:
            hyps = greedy_search(self.model, batch.src, batch.src_lengths, max_len_a=c.max_len_a, max_len_b=c.max_len_b)
            return [h.tokens for h in hyps]
        nbest = beam_search(
            self.model,
            batch.src,
            batch.src_lengths,
            beam_size=c.beam_size,
            length_penalty_alpha=c.length_penalty,
            max_len_a=c.max_len_a,
            max_len_b=c.max_len_b,
        )
        return [h[0].tokens for h in nbest]


def device_for(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a cuda request without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' asked for, but torch sees no CUDA GPU: use --device cpu")
    return torch.device(name)
