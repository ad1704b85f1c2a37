"""The score-function study: trained runs side by side on the test split.

    python -m translate.study runs/study/*/ --data ../shared/data/multi30k --out docs/study

For each run folder (its ``best.pt`` and ``metrics.jsonl``): parameters, test BLEU and
chrF (beam 5), training target tokens/s (the mean of the logged windows, the first left
out), decoding sentences/s (beam 5, this process, model loaded), the mean entropy of the
attention rows over the test split (nats; the heads' mean; one row per output piece, the
EOS steps left out), the share of attention on the source's end (``eos_attention``, as
validation logs it: far above 0.1, a collapsed attention), and one heatmap of the same
test sentence per run. Prints a Markdown table and writes ``study.json`` beside the
pictures. A client of the package, like the benchmark.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from translate.checkpoint import load_checkpoint
from translate.config import DataConfig, DecodeConfig
from translate.data import load_corpus
from translate.evaluation import eos_attention, score
from translate.formats import draw_heatmap
from translate.model import count_parameters
from translate.plots import entropy
from translate.runlog import MetricsLog
from translate.translator import Translator


def describe(run: Path) -> str:
    """A run's variant in words: attention, plus the encoder self-attention when on."""
    cfg = Translator.from_checkpoint(str(run / "best.pt")).model.cfg
    return cfg.attention + (" + encoder self-attention" if cfg.encoder_self_attention else "")


def study_run(run: Path, src: list[str], refs: list[str], *, sentence: int, out: Path) -> dict:
    translator = Translator.from_checkpoint(str(run / "best.pt"), DecodeConfig(beam_size=5), device="cpu")
    start = time.perf_counter()
    hyps = list(translator.translate_lines(src))
    seconds = time.perf_counter() - start
    s = score(hyps, refs)
    results = list(translator.translate_results(src))
    rows = [h.heads.mean(0)[:-1] for r in results for h in r.hypotheses[:1]]  # each output piece's row
    train = [r["tokens_per_s"] for r in MetricsLog.read(run) if r["kind"] == "train" and r["step"] > 1]
    picture = draw_heatmap(out / f"{run.name}.png", results[sentence], title=describe(run))
    return {
        "run": str(run),
        "variant": describe(run),
        "parameters": count_parameters(translator.model),
        "test_bleu": round(s.bleu, 2),
        "test_chrf": round(s.chrf, 2),
        "train_tgt_tokens_per_s": round(sum(train) / len(train)) if train else None,
        "decode_sents_per_s": round(len(src) / seconds, 1),
        "attention_entropy": round(entropy(rows), 3),  # over every row of every sentence
        "attention_on_eos": round(eos_attention(results), 3),
        "heatmap": str(picture),
        "bleu_signature": s.bleu_signature,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m translate.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding best.pt and metrics.jsonl")
    parser.add_argument("--data", required=True, help="data.path of the corpus the runs trained on")
    parser.add_argument("--sentence", type=int, default=0, help="test sentence (from 0) drawn for every run")
    parser.add_argument("--out", type=Path, default=Path("docs/study"), help="folder for the pictures and study.json")
    args = parser.parse_args(argv)
    trained = load_checkpoint(args.runs[0] / "best.pt").get("run_config", {})
    data = {k[5:]: v for k, v in trained.items() if k.startswith("data.")}  # as the runs were trained
    corpus = load_corpus(DataConfig(**{**data, "path": args.data}))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [study_run(run, corpus.test.src, corpus.test.tgt, sentence=args.sentence, out=args.out) for run in args.runs]
    (args.out / "study.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    columns = ["variant", "parameters", "test2016 BLEU", "chrF", "train tgt tok/s", "decode sent/s"]
    columns += ["entropy", "on EOS"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for r in rows:
        cells = [r["variant"], f"{r['parameters']:,}", f"{r['test_bleu']:.2f}", f"{r['test_chrf']:.2f}"]
        cells += [str(r["train_tgt_tokens_per_s"]), str(r["decode_sents_per_s"]), f"{r['attention_entropy']:.3f}"]
        cells.append(f"{r['attention_on_eos']:.3f}")
        print("| " + " | ".join(cells) + " |")
    print(f"signature: {rows[0]['bleu_signature']}")


if __name__ == "__main__":
    main()
