"""Scores: sacreBLEU (Post 2018) on detokenized hypotheses against the raw references,
and the validation metrics training reads (loss, perplexity, BLEU, chrF, the attention on the source's end)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
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


def translate_split(
    translator, src: Sequence[str], refs: Sequence[str], *, progress: Callable[[int], object] | None = None
) -> tuple[list[str], Scores]:
    """Decode `src` with a Translator and score it against `refs`; returns (hypotheses, scores).

    `progress` (a progress bar's update) hears of every decoded batch."""
    hyps = list(translator.translate_lines(src, progress=progress))
    return hyps, score(hyps, refs)


def validation_batches(tokenizer, src: Sequence[str], tgt: Sequence[str], *, batch_tokens: int, device) -> list:
    """Every pair of a validation split (none dropped) in token-budget batches, on `device`."""
    from translate.batching import Examples

    examples = Examples(tokenizer.encode(list(src)), tokenizer.encode(list(tgt)))
    return [examples.batch(index).to(device) for index in examples.batches(batch_tokens=batch_tokens)]


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    src: Sequence[str],
    refs: Sequence[str],
    *,
    batches: list,
    search,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    products: torch.dtype = torch.float32,
    progress: Callable[[int], object] | None = None,
) -> tuple[dict[str, float], str]:
    """Validation metrics of `model`: teacher-forced loss and perplexity over `batches`, and
    BLEU / chrF of `src` decoded with the search settings `search` (a DecodeConfig); and
    the BLEU signature; and the share of attention on the source's end (eos_attention) of the
    translations. `progress` hears of each decoded batch (the validation's bar)."""
    from translate.translator import Translator

    model.eval()
    nll_sum, ntok = 0.0, 0
    for batch in batches:
        with autocast():
            features = model.features(batch)
        nll_sum += float(model.loss(batch, features=features, products=products)[1])  # as training computes it
        ntok += batch.ntokens
    with autocast():  # the attention comes with the translations: the watch on it costs no second decoding
        results = list(Translator(model, tokenizer, search).translate_results(src, n_best=1, progress=progress))
    s = score([r.text for r in results], refs)
    loss = nll_sum / max(ntok, 1)
    metrics = {"valid_loss": loss, "valid_ppl": math.exp(min(loss, 50)), "valid_bleu": s.bleu, "valid_chrf": s.chrf}
    return {**metrics, "valid_eos_attention": eos_attention(results)}, s.bleu_signature


def eos_attention(translations: Sequence) -> float:
    """The share of attention on the source's end (EOS): per translated sentence and head, the mean
    over its best hypothesis's steps of the weight on the source's last position; per head, the mean
    over sentences; the least of the heads (0 without any sentence). A model that aligns puts about
    1 / (target length + 1) there (the step that ends the sentence looks at the source's end), and a
    head that rests on EOS beside others that align does not count; a model whose attention collapsed
    translates from the encoder's final state alone and puts most of it there in every head
    (README, Results: "An attention collapse")."""
    shares = [t.hypotheses[0].heads[:, :, -1].float().mean(1) for t in translations if t.hypotheses]
    return float(torch.stack(shares).mean(0).min()) if shares else 0.0
