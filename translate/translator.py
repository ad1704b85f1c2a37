"""Lines of text in, the same number of translated lines out, in the same order.

Empty and whitespace-only lines give empty translations without touching the model;
every other line is tokenized, decoded in length-sorted batches (less padding, more
speed) and put back in its original place. Input is consumed in chunks, so a file of
any size streams through in bounded memory.

From Python::

    from translate import Translator
    t = Translator.load("runs/multi30k.en-de/best.pt")      # beam 5, the GPU if there is one
    t.translate("A dog runs.")                              # -> one string
    t.translate(["A dog runs.", "Two men talk."])           # -> a list of strings
    t.translate_detailed(["A dog runs."], n_best=3)         # -> n-best, scores, pieces, alignment, attention
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from translate.alignment import METHODS, word_alignment, words
from translate.batching import make_batch
from translate.checkpoint import CheckpointError, load_checkpoint, tokenizer_bytes
from translate.config import DecodeConfig, ModelConfig
from translate.model import Seq2Seq
from translate.precision import choose_decode_precision, decoding_precision
from translate.search import Hypothesis, beam_search, greedy_search
from translate.textfile import has_text
from translate.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CHUNK_LINES = 4096  # lines read ahead and sorted by length together


@dataclass
class Candidate:
    """One hypothesis for a sentence, with what the model did to make it."""

    text: str
    score: float  # log-probability / length penalty (what the beam ranks by)
    tokens: list[str]  # the output's subword pieces, without EOS
    alignment: list[tuple[int, int]]  # (source word, target word), from 0
    attention: torch.Tensor  # (len(tokens) + 1, len(source_tokens) + 1): mean over heads, EOS last on both axes
    heads: torch.Tensor  # (H, len(tokens) + 1, len(source_tokens) + 1): each head's (H = 1 but for multi-head)

    @property
    def words(self) -> list[str]:
        return words(self.tokens)


@dataclass
class Translation:
    """A sentence and its hypotheses, best first (none for an empty line)."""

    source: str
    source_tokens: list[str]  # subword pieces, without EOS
    hypotheses: list[Candidate] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.hypotheses[0].text if self.hypotheses else ""

    @property
    def source_words(self) -> list[str]:
        return words(self.source_tokens)


class Translator:
    def __init__(
        self,
        model: Seq2Seq,
        tokenizer: Tokenizer,
        cfg: DecodeConfig,
        *,
        max_input_len: int = 250,
        probe_cache: Path | None = None,
    ) -> None:
        """`probe_cache`: where decode.precision=auto keeps its probe's figures (default: this process only)."""
        if cfg.int8:
            from translate.quantize import quantize_decoder

            model = quantize_decoder(model)
        self.model, self.tokenizer, self.cfg = model.eval(), tokenizer, cfg
        self.max_input_len = max_input_len
        self.device = next(model.parameters()).device
        choice = choose_decode_precision(cfg.precision, self.model, self.device, beam=cfg.beam_size, cache=probe_cache)
        self.precision, self.precision_reason = choice.precision, choice.reason
        if cfg.precision != "fp32":
            log.info("decoding in %s (decode.precision=%s: %s)", choice.precision, cfg.precision, choice.reason)
        self.model.warm_up(context=decoding_precision(self.precision, self.device))

    @classmethod
    def load(cls, path: str, *, beam: int = DecodeConfig.beam_size, device: str = "auto", **decode) -> Translator:
        """A model file, ready to translate: `beam` (1 = greedy), `device` (auto: the GPU if
        there is one), and any other decoding setting by name (int8=True, n_best=3,
        length_penalty=0.6, precision="auto", ...; see DecodeConfig). Read with weights_only: no code runs."""
        return cls.from_checkpoint(path, DecodeConfig(beam_size=beam, **decode), device=device)

    @classmethod
    def from_checkpoint(
        cls, path: str, cfg: DecodeConfig | None = None, device: str = "auto", *, probe_cache: Path | None = None
    ) -> Translator:
        """The model and tokenizer of a checkpoint file, on `device` (auto: cuda when there is one)."""
        return cls.from_payload(
            load_checkpoint(path), cfg or DecodeConfig(), device=device, name=str(path), probe_cache=probe_cache
        )

    @classmethod
    def from_payload(
        cls, ckpt: dict, cfg: DecodeConfig, *, device: str = "auto", name: str, probe_cache: Path | None = None
    ) -> Translator:
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
        return cls(model.to(device_for(device)), tokenizer, cfg, probe_cache=probe_cache)

    # ---- the Python API -----------------------------------------------------------------

    def translate(self, sentences: str | Sequence[str]) -> str | list[str]:
        """One sentence -> its translation; a list of sentences -> a list of translations."""
        if isinstance(sentences, str):
            return self.translate([sentences])[0]
        return list(self.translate_lines(_sentences(sentences)))

    def translate_detailed(
        self, sentences: str | Sequence[str], *, n_best: int | None = None, alignment: str = METHODS[0]
    ) -> list[Translation]:
        """Per sentence: its `n_best` hypotheses (default decode.n_best), each with score,
        subword pieces, word alignment (`alignment`: shifted or argmax) and attention."""
        if isinstance(sentences, str):
            sentences = [sentences]
        return list(self.translate_results(_sentences(sentences), n_best=n_best, alignment=alignment))

    # ---- streams of lines (the command line, scoring) -------------------------------------

    def translate_lines(
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
        for _, _, hyps in self._hypotheses(lines, first_line, chunk_lines, progress, n_best=1, need_attention=False):
            yield self._text(hyps[0]) if hyps else ""

    def translate_results(
        self,
        lines: Iterable[str],
        *,
        n_best: int | None = None,
        alignment: str = METHODS[0],
        first_line: int = 1,
        chunk_lines: int | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> Iterator[Translation]:
        """Like translate_lines, one :class:`Translation` per line, with n-best, alignments and attention."""
        if alignment not in METHODS:
            raise ValueError(f"alignment={alignment!r}: choose one of {', '.join(METHODS)}")
        n_best = n_best or self.cfg.n_best
        if n_best > self.cfg.beam_size:
            raise ValueError(f"n_best={n_best} cannot exceed the beam size {self.cfg.beam_size}")
        for line, ids, hyps in self._hypotheses(
            lines, first_line, chunk_lines, progress, n_best=n_best, need_attention=True
        ):
            yield self._translation(line, ids, hyps, alignment)

    def _text(self, hyp: Hypothesis) -> str:
        return " ".join(self.tokenizer.decode([hyp.tokens])[0].split())  # no stray newlines or control whitespace

    def _translation(self, line: str, ids: list[int], hyps: list[Hypothesis], method: str) -> Translation:
        if not hyps:
            return Translation(line, [])
        src = self._pieces(ids)  # what the model read, cut to the input limit
        out = []
        for h in hyps:
            tgt = self._pieces(h.tokens)
            heads = h.attention.transpose(0, 1)  # (H, T + 1, S + 1)
            mean = heads.mean(0)
            out.append(Candidate(self._text(h), h.score, tgt, word_alignment(mean, src, tgt, method), mean, heads))
        return Translation(line, src, out)

    def _pieces(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.sp.id_to_piece(i) for i in ids]

    def _encode(self, texts: list[str], line_numbers: list[int] | None = None) -> list[list[int]]:
        """Subword ids, cut to the input limit (with a warning naming the line, given `line_numbers`)."""
        ids = self.tokenizer.encode(texts)
        for number, seq in zip(line_numbers or [], ids):
            if len(seq) > self.max_input_len:
                log.warning(
                    "line %d: %d subwords, longer than the limit of %d; only the first %d are translated",
                    number,
                    len(seq),
                    self.max_input_len,
                    self.max_input_len,
                )
        return [seq[: self.max_input_len] for seq in ids]

    def _hypotheses(self, lines, first_line, chunk_lines, progress, *, n_best: int, need_attention: bool):
        """Per input line: the line, the subword ids the model read, its hypotheses best first
        (no ids and no hypotheses for a line without text)."""
        if isinstance(lines, str):
            raise TypeError("translate_lines() takes an iterable of lines; for one sentence use translate(sentence)")
        chunk_lines = chunk_lines or CHUNK_LINES
        progress = progress or (lambda n: None)
        chunk: list[str] = []
        start = first_line
        for line in lines:
            chunk.append(line)
            if len(chunk) == chunk_lines:
                yield from self._translate_chunk(chunk, start, progress, n_best, need_attention)
                start += len(chunk)
                chunk = []
        if chunk:
            yield from self._translate_chunk(chunk, start, progress, n_best, need_attention)

    def _translate_chunk(self, lines: list[str], first_line: int, progress, n_best: int, need_attention: bool):
        out: list[list[Hypothesis]] = [[] for _ in lines]
        line_ids: list[list[int]] = [[] for _ in lines]
        todo = [i for i, line in enumerate(lines) if has_text(line)]
        if len(todo) < len(lines):
            progress(len(lines) - len(todo))  # empty lines: done at once
        ids = self._encode([lines[i] for i in todo], [first_line + i for i in todo])
        order = sorted(range(len(todo)), key=lambda j: len(ids[j]))
        for part in self._batches(order, ids):
            nbest = self.search([ids[j] for j in part], n_best=n_best, need_attention=need_attention)
            for j, hyps in zip(part, nbest):
                out[todo[j]], line_ids[todo[j]] = hyps, ids[j]
            progress(len(part))
        return list(zip(lines, line_ids, out))

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

    def search(self, src: list[list[int]], *, n_best: int = 1, need_attention: bool = False) -> list[list[Hypothesis]]:
        """Subword ids of sentences -> for each, its `n_best` hypotheses, best first."""
        batch = make_batch(src).to(self.device)
        c = self.cfg
        lengths = dict(max_len_a=c.max_len_a, max_len_b=c.max_len_b)
        with decoding_precision(self.precision, self.device):  # around the search only: lines are generated lazily
            if c.beam_size == 1:
                hyps = greedy_search(self.model, batch.src, batch.src_lengths, **lengths, need_attention=need_attention)
                return [[h] for h in hyps]
            nbest = beam_search(
                self.model,
                batch.src,
                batch.src_lengths,
                beam_size=c.beam_size,
                length_penalty_alpha=c.length_penalty,
                n_best=n_best,
                early_stop=c.early_stop,
                need_attention=need_attention,
                **lengths,
            )
        return [_pad(h, n_best) for h in nbest]


def _pad(hyps: list[Hypothesis], n: int) -> list[Hypothesis]:
    """Exactly n hypotheses: a beam that finished fewer repeats its last (never happens with n <= beam in practice)."""
    return hyps + [replace(hyps[-1])] * (n - len(hyps)) if hyps else hyps


def _sentences(sentences) -> list[str]:
    out = list(sentences)
    bad = next((s for s in out if not isinstance(s, str)), None)
    if bad is not None:
        raise TypeError(f"sentences must be strings, got {type(bad).__name__}: {bad!r}")
    return out


def device_for(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a cuda request without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' asked for, but torch sees no CUDA GPU: use --device cpu")
    return torch.device(name)
