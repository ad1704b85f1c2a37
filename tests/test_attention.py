"""Seeing the attention: weights through the search contract, word alignments, heatmaps,
n-best lists, training curves and the Python API (issue 10)."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest
import torch

from translate.alignment import METHODS, word_alignment, word_ids, word_matrix, words
from translate.batching import make_batch
from translate.config import DecodeConfig
from translate.runlog import MetricsLog
from translate.search import beam_search, greedy_search
from translate.translator import Translator

from .conftest import (
    REVERSAL_OVERRIDES,
    ROOT,
    reversal_pairs,
    reversal_tokenizer,
    run_cli,
    tiny_model,
    write_text_corpus,
)


@pytest.mark.parametrize("attention", ["general", "multihead"])
def test_every_hypothesis_of_a_beam_carries_its_attention_rows(attention):
    model = tiny_model(40, attention=attention, heads=2).eval()
    src = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    batch = make_batch(src)
    nbest = beam_search(model, batch.src, batch.src_lengths, beam_size=4, length_penalty_alpha=1.0, max_len_a=1.5,
                        max_len_b=4, n_best=4, need_attention=True)  # fmt: skip
    heads = 2 if attention == "multihead" else 1
    for sentence, hyps in zip(src, nbest):
        assert len(hyps) == 4
        for h in hyps:
            assert h.attention.shape == (len(h.tokens) + 1, heads, len(sentence) + 1)  # steps x heads x real source
            torch.testing.assert_close(h.attention.sum(-1), torch.ones(len(h.tokens) + 1, heads))
    (greedy,) = greedy_search(model, batch.src[:1], batch.src_lengths[:1], max_len_a=1.5, max_len_b=4,
                              need_attention=True)  # fmt: skip
    assert greedy.attention.shape == (len(greedy.tokens) + 1, heads, len(src[0]) + 1)


def test_attention_is_zero_on_padding_and_the_same_alone_and_in_a_batch():
    model = tiny_model(40, attention="bahdanau").eval()
    src = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16]]
    batch = make_batch(src)
    with torch.no_grad():
        memory, state = model.encode(batch.src, batch.src_lengths)
        tokens = torch.full((3,), 2, dtype=torch.long)
        _, _, weights = model.decode_step(tokens, state, memory, need_attention=True)
    assert weights.shape == (3, 1, 8)
    assert torch.all(weights[1, :, 3:] == 0) and torch.all(weights[2, :, 4:] == 0)  # padding gets nothing
    kw = dict(beam_size=3, length_penalty_alpha=1.0, max_len_a=1.5, max_len_b=4, need_attention=True)
    together = beam_search(model, batch.src, batch.src_lengths, **kw)
    for i, sentence in enumerate(src):
        one = make_batch([sentence])
        (alone,) = beam_search(model, one.src, one.src_lengths, **kw)
        assert alone[0].tokens == together[i][0].tokens
        torch.testing.assert_close(alone[0].attention, together[i][0].attention, atol=1e-5, rtol=1e-4)


def test_asking_for_attention_changes_no_translation():
    tokenizer = reversal_tokenizer()
    translator = Translator(tiny_model(tokenizer.vocab_size, seed=4), tokenizer, DecodeConfig(beam_size=3))
    lines = [s for s, _ in reversal_pairs(30, seed=8)] + [""]
    plain = list(translator.translate_lines(lines))
    detailed = [r.text for r in translator.translate_results(lines, n_best=3)]
    assert detailed == plain and any(plain)


def test_n_best_lists_are_in_order_and_start_with_the_plain_output():
    tokenizer = reversal_tokenizer()
    translator = Translator(tiny_model(tokenizer.vocab_size, seed=5), tokenizer, DecodeConfig(beam_size=4))
    lines = [s for s, _ in reversal_pairs(20, seed=9)]
    results = translator.translate_detailed(lines, n_best=4)
    assert [r.source for r in results] == lines
    for result, plain in zip(results, translator.translate(lines)):
        scores = [h.score for h in result.hypotheses]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True)
        assert result.hypotheses[0].text == plain
    with pytest.raises(ValueError, match="beam size"):
        translator.translate_detailed(lines, n_best=5)


def test_pieces_become_words_and_piece_links_become_word_links():
    src, tgt = ["\u2581un", "break", "able", "\u2581thing", "s"], ["\u2581Un", "zer", "\u2581Ding"]
    assert word_ids(src) == [0, 0, 0, 1, 1] and words(src) == ["unbreakable", "things"]
    attention = torch.zeros(4, 6)  # 3 target pieces + EOS step, 5 source pieces + EOS
    attention[0, 1] = attention[1, 2] = attention[2, 3] = attention[3, 4] = 1.0
    assert word_alignment(attention, src, tgt, "argmax") == [(0, 0), (1, 1)]
    assert word_alignment(attention, src, tgt, "shifted") == [(0, 0), (1, 0), (1, 1)]
    matrix = word_matrix(attention, src, tgt)  # (target words, source words)
    torch.testing.assert_close(matrix, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def _diagonal_share(translator: Translator, pairs, method: str, true_source) -> float:
    """Share of target words aligned to their true source word (true_source(j, n) for a sentence of n words)."""
    right = total = 0
    for (src, _), result in zip(pairs, translator.translate_detailed([s for s, _ in pairs], alignment=method)):
        n = len(src.split())
        links = dict((j, i) for i, j in result.hypotheses[0].alignment)
        total += n
        right += sum(links.get(j) == true_source(j, n) for j in range(n))
    return right / total


@pytest.mark.slow
def test_reversal_alignments_lie_on_the_anti_diagonal(reversal_run, capsys):
    translator = Translator.load(str(reversal_run / "run" / "best.pt"), beam=3)
    pairs = reversal_pairs(200, seed=21)
    shares = {m: _diagonal_share(translator, pairs, m, lambda j, n: n - 1 - j) for m in METHODS}
    with capsys.disabled():
        print(f"\nreversal task, share of target words on the anti-diagonal: {shares}")
    assert shares[METHODS[0]] >= 0.9 and shares[METHODS[0]] >= max(shares.values())  # the default is the better


@pytest.mark.slow
def test_copy_alignments_lie_on_the_diagonal(tmp_path, capsys):
    copy = lambda n, seed: [(s, s.upper()) for s, _ in reversal_pairs(n, seed)]  # noqa: E731
    write_text_corpus(tmp_path / "corpus", {"train": copy(4000, 1), "val": copy(100, 2), "test": copy(100, 3)})
    trained = run_cli("train", *REVERSAL_OVERRIDES, "data.name=copy", f"data.path={tmp_path / 'corpus'}",
                      "run_dir=run", cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr.decode()[-2000:]
    translator = Translator.load(str(tmp_path / "run" / "best.pt"), beam=3)
    pairs = copy(200, 22)
    shares = {m: _diagonal_share(translator, pairs, m, lambda j, n: j) for m in METHODS}
    with capsys.disabled():
        print(f"\ncopy task, share of target words on the diagonal: {shares}")
    assert shares[METHODS[0]] >= 0.9


def test_a_heatmap_is_a_png_labelled_with_the_sentence_words(tmp_path):
    from PIL import Image

    from translate.plots import MAX_PLOT_WORDS, attention_heatmap, heatmap_figure

    src, tgt = ["a", "small", "dog"], ["ein", "kleiner", "Hund", "."]
    heads = torch.softmax(torch.randn(2, 4, 3), dim=-1)
    path = attention_heatmap(tmp_path / "1.png", src, tgt, heads)
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
    fig = heatmap_figure(src, tgt, heads)
    assert len(fig.axes) == 3  # two heads side by side, then their mean
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == src
        assert [t.get_text() for t in ax.get_yticklabels()] == tgt
    long = [f"w{i}" for i in range(MAX_PLOT_WORDS + 5)]
    cut = heatmap_figure(long, tgt, torch.rand(1, 4, len(long)))
    assert len(cut.axes[0].get_xticklabels()) == MAX_PLOT_WORDS


@pytest.mark.slow
def test_translate_alignment_n_best_and_plots_leave_the_translations_as_they_were(reversal_run, tmp_path):
    model = str(reversal_run / "run" / "best.pt")
    lines = ["a b c", "", "d e f g", " ".join("abcdefghijkl" * 6)]  # the last: longer than the plotting limit
    src = tmp_path / "in.txt"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    plain = run_cli("translate", "--model", model, str(src), "--beam", "3", cwd=tmp_path)
    aligned = run_cli("translate", "--model", model, str(src), "--beam", "3", "--alignment",
                      "--attention-plots", str(tmp_path / "plots"), cwd=tmp_path)  # fmt: skip
    assert plain.returncode == 0 and aligned.returncode == 0, aligned.stderr.decode()[-2000:]
    out = aligned.stdout.decode().split("\n")[:-1]
    assert len(out) == 2 * len(lines)
    assert "".join(t + "\n" for t in out[0::2]).encode() == plain.stdout  # byte-identical translations
    assert out[0] == "C B A" and out[1] == "0-2 1-1 2-0" and out[3] == ""  # an empty line, an empty alignment
    assert all(re.fullmatch(r"(\d+-\d+( \d+-\d+)*)?", a) for a in out[1::2])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["1.png", "3.png", "4.png"]  # none for line 2
    said = aligned.stderr.decode()
    assert said.count("empty lines get no picture") == 1 and "the picture is cut" in said

    nbest = run_cli("translate", "--model", model, str(src), "--beam", "3", "--n-best", "3", cwd=tmp_path)
    rows = [r.split(" ||| ") for r in nbest.stdout.decode().split("\n")[:-1]]
    assert len(rows) == 3 * len(lines) and [int(r[0]) for r in rows] == [i for i in range(len(lines)) for _ in "abc"]
    for i in range(len(lines)):
        block = rows[3 * i : 3 * i + 3]
        scores = [float(r[2]) for r in block]
        assert scores == sorted(scores, reverse=True)
        assert block[0][1] + "\n" == plain.stdout.decode().split("\n")[i] + "\n"

    blocked = tmp_path / "file_not_folder"
    blocked.write_text("x")
    refused = run_cli("translate", "--model", model, str(src), "--attention-plots", str(blocked / "sub"),
                      "-o", str(tmp_path / "never.txt"), cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "--attention-plots" in refused.stderr.decode()
    assert not (tmp_path / "never.txt").exists()


@pytest.mark.slow
def test_the_readme_python_example_runs(reversal_run, tmp_path, capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("runs/multi30k.en-de/best.pt", str(reversal_run / "run" / "best.pt"))
    code = code.replace("A dog runs through the grass.", "a b c d").replace("Two men talk.", "e f g")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "D C B A" and printed[1].startswith("['G F E', ")  # a string, then a list in order
    t = Translator.load(str(reversal_run / "run" / "best.pt"), beam=2)
    assert isinstance(t.translate("a b"), str) and t.translate(["a b"]) == [t.translate("a b")]
    with pytest.raises(TypeError, match="strings"):
        t.translate([b"a b"])


def test_training_leaves_a_metrics_file_curves_and_tensorboard_scalars(tmp_path, monkeypatch):
    from PIL import Image

    scalars: list[tuple[str, float, int]] = []

    class FakeWriter:  # stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is optional)
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    log = MetricsLog(tmp_path)
    log.add("train", 10, 0.5, loss=3.0, lr=1e-3, tokens_per_s=1000.0)
    log.add("valid", 10, 0.6, valid_loss=2.5, valid_ppl=12.2, valid_bleu=3.0, valid_chrf=20.0)
    log.draw()
    again = MetricsLog(tmp_path)  # a resumed run: appends
    again.add("train", 20, 1.0, loss=2.0, lr=1e-3, tokens_per_s=1100.0)
    again.draw()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 10), ("valid", 10), ("train", 20)]
    assert records[1]["valid_bleu"] == 3.0 and records[0]["minutes"] == 0.5
    with Image.open(tmp_path / "curves.png") as image:
        image.verify()
    assert ("valid/valid_bleu", 3.0, 10) in scalars and ("train/loss", 2.0, 20) in scalars


@pytest.mark.slow
def test_a_training_run_keeps_its_curves_and_attention_pictures(reversal_run):
    run = reversal_run / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [150, 300, 450]
    assert {"loss", "lr", "tokens_per_s", "minutes"} <= set(records[0])
    assert {"valid_loss", "valid_ppl", "valid_bleu", "valid_chrf"} <= set(valid[0])
    assert (run / "curves.png").is_file()
    assert sorted(p.name for p in (run / "attention" / "step450").iterdir()) == ["valid1.png", "valid2.png",
                                                                                   "valid3.png"]  # fmt: skip


@pytest.mark.slow
def test_the_study_compares_runs_on_the_test_split(reversal_run, tmp_path, capsys):
    from translate.study import main

    main([str(reversal_run / "run"), "--data", str(reversal_run / "corpus"), "--sentence", "3", "--out", str(tmp_path)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| variant | parameters | test2016 BLEU") and table[2].startswith("| general |")
    (row,) = json.loads((tmp_path / "study.json").read_text())
    assert row["test_bleu"] > 80 and row["decode_sents_per_s"] > 0 and row["train_tgt_tokens_per_s"] > 0
    assert 0 <= row["attention_entropy"] < 1.0  # a model that reverses well attends sharply
    assert 0 <= row["attention_on_eos"] < 0.05 and table[0].endswith("| on EOS |")  # and aligns: no collapse
    assert (tmp_path / "run.png").is_file()


@pytest.mark.slow
def test_make_bleu_writes_n_best_lists_and_scores_the_first(reversal_run):
    data = [*REVERSAL_OVERRIDES, f"data.path={reversal_run / 'corpus'}", "run_dir=run"]
    plain = run_cli("bleu", *data, cwd=reversal_run)
    hyps = (reversal_run / "run" / "test.best.beam3.yy").read_text(encoding="utf-8").splitlines()
    result = run_cli("bleu", *data, "decode.n_best=3", cwd=reversal_run)
    assert plain.returncode == 0 and result.returncode == 0, result.stderr.decode()[-2000:]
    assert plain.stdout.decode().split("hypotheses:")[0] == result.stdout.decode().split("hypotheses:")[0]  # scores
    rows = [r.split(" ||| ") for r in (reversal_run / "run" / "test.best.beam3.yy.nbest3").read_text().splitlines()]
    assert len(rows) == 3 * len(hyps) == 300
    assert [rows[3 * i][1] for i in range(len(hyps))] == hyps
    refused = run_cli("bleu", *data, "decode.n_best=4", cwd=reversal_run)
    assert refused.returncode == 1 and "decode.n_best=4 is not allowed" in refused.stderr.decode()
