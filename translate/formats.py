"""What ``translate`` writes for each input line, besides the plain translation.

* ``--n-best N``: N lines per input line, ``index ||| hypothesis ||| score`` (index from
  0, the Moses / fairseq n-best layout), best first; with ``--alignment`` a fourth field
  ``||| i-j ...``.
* ``--alignment``: after each translation, a line of its word alignment, ``i-j`` pairs
  (source word i, target word j), empty for an empty input line.
* ``--attention-plots DIR``: ``DIR/<line number>.png``, the best hypothesis's attention
  between words (each head, and their mean, for multi-head).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from translate.alignment import format_alignment, word_matrix
from translate.translator import Translation

log = logging.getLogger(__name__)


def result_lines(results: Iterable[Translation], *, n_best: int, alignment: bool) -> Iterator[str]:
    """The output lines for a stream of results, in input order."""
    for index, result in enumerate(results):
        if n_best > 1 or not alignment:
            hyps = result.hypotheses
            for k in range(n_best):
                h = hyps[k] if k < len(hyps) else None  # an empty line: N empty hypotheses
                fields = [str(index), h.text if h else "", f"{h.score:.4f}" if h else "0.0000"]
                if alignment:
                    fields.append(format_alignment(h.alignment) if h else "")
                yield " ||| ".join(fields) if n_best > 1 else result.text
        else:
            yield result.text
            yield format_alignment(result.hypotheses[0].alignment) if result.hypotheses else ""


class Heatmaps:
    """One PNG per input line with text, in `folder` (checked writable before any decoding)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder):
                pass
        except OSError as err:
            raise OSError(f"--attention-plots {self.folder}: cannot write there ({err.strerror or err})") from None
        self._said_empty = False

    def __call__(self, results: Iterable[Translation], first_line: int = 1) -> Iterator[Translation]:
        """Pass the results through, drawing each one's picture on the way."""
        for number, result in enumerate(results, start=first_line):
            if result.hypotheses:
                draw_heatmap(self.folder / f"{number}.png", result, title=f"line {number}")
            elif not self._said_empty:
                log.info("line %d is empty: empty lines get no picture (and an empty alignment)", number)
                self._said_empty = True
            yield result


def draw_heatmap(path: Path, result: Translation, *, title: str) -> Path:
    """The best hypothesis's attention between words, each head's (and their mean for multi-head)."""
    from translate.plots import attention_heatmap

    best = result.hypotheses[0]
    heads = word_matrix(best.heads, result.source_tokens, best.tokens)
    return attention_heatmap(path, result.source_words, best.words, heads, title=title)
