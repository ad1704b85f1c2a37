"""sacreBLEU (Post 2018) on detokenized hypotheses against the raw references."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_text: str  # sacreBLEU's one-line summary (n-gram precisions, BP, lengths)

    def report(self, name: str) -> str:
        return (
            f"{name} BLEU = {self.bleu:.2f}  [{self.bleu_text}]\n  signature: {self.bleu_signature}\n"
            f"{name} chrF2 = {self.chrf:.2f}\n  signature: {self.chrf_signature}"
        )


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    """Corpus BLEU (13a, mixed case) and chrF2 of one system against one reference."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return Scores(
        b.score,
        c.score,
        str(bleu.get_signature()),
        str(chrf.get_signature()),
        b.format(width=2).split(" = ", 1)[1].split(" ", 1)[1],  # precisions, BP, lengths
    )
