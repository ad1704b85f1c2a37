"""The pipeline as a user runs it: train, bleu and translate on a synthetic task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from translate.checkpoint import load_checkpoint, model_payload, save_checkpoint
from translate.config import DecodeConfig
from translate.translator import Translator

from .conftest import REVERSAL_OVERRIDES, reversal_pairs, reversal_tokenizer, run_cli, tiny_model

pytestmark = pytest.mark.slow


def test_a_small_model_learns_to_reverse(reversal_run):
    run = reversal_run / "run"
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["metrics"]["valid_bleu"] > 80
    translator = Translator.from_checkpoint(str(run / "best.pt"), DecodeConfig(beam_size=1))
    pairs = reversal_pairs(200, seed=99)
    hyps = list(translator.translate_lines([s for s, _ in pairs]))
    accuracy = sum(h == t for h, (_, t) in zip(hyps, pairs)) / len(pairs)
    assert accuracy >= 0.9, f"exact-match accuracy {accuracy:.2f} on held-out reversals"


def test_bleu_command_prints_scores_with_signatures(reversal_run):
    result = run_cli(
        "bleu", *REVERSAL_OVERRIDES, f"data.path={reversal_run / 'corpus'}", "run_dir=run", cwd=reversal_run
    )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert "test xx-yy BLEU = " in out and "test xx-yy chrF2 = " in out
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out
    assert "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:" in out
    hyp_file = reversal_run / "run" / "test.best.beam3.yy"
    assert len(hyp_file.read_text(encoding="utf-8").splitlines()) == 100

    # bf16 decoding says so, and its hypotheses go to their own file, next to the fp32 ones
    overrides = [*REVERSAL_OVERRIDES, f"data.path={reversal_run / 'corpus'}", "run_dir=run"]
    bf16 = run_cli("bleu", *overrides, "decode.precision=bf16", cwd=reversal_run)
    assert bf16.returncode == 0, bf16.stderr.decode()[-2000:]
    assert "decoding in bf16 (decode.precision=bf16: asked for)" in bf16.stderr.decode()
    bf16_file = reversal_run / "run" / "test.best.beam3.bf16.yy"
    assert len(bf16_file.read_text(encoding="utf-8").splitlines()) == 100 and hyp_file.is_file()


def test_translate_keeps_one_line_per_input_line(reversal_run):
    model = reversal_run / "run" / "best.pt"
    lines = ["a b c", "", "   ", "d e f g", "\t", "h i j", "", "k l"]
    src = reversal_run / "awkward.txt"
    src.write_bytes(("\r\n".join(lines)).encode("utf-8"))  # CRLF, no final newline
    result = run_cli("translate", "--model", str(model), str(src), "--beam", "2", cwd=reversal_run)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode("utf-8").split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    out = out[:-1]
    assert [o == "" for o in out] == [not line.strip() for line in lines]
    assert out[0] == "C B A" and out[3] == "G F E D"
    # stdin and -o give the same lines; so does --early-stop on a model this sure of itself
    dest = reversal_run / "out.txt"
    piped = run_cli("translate", "--model", str(model), "--beam", "2", "--early-stop", "-o", str(dest),
                    cwd=reversal_run, input=src.read_bytes())  # fmt: skip
    assert piped.returncode == 0, piped.stderr.decode()
    assert dest.read_text(encoding="utf-8").split("\n")[:-1] == out


def test_translate_reports_bad_input_and_bad_models_clearly(reversal_run):
    model = reversal_run / "run" / "best.pt"
    bad = b"a b\nc \xff d\n"
    result = run_cli("translate", "--model", str(model), cwd=reversal_run, input=bad)
    assert result.returncode == 2
    assert "line 2: invalid UTF-8 at byte 2" in result.stderr.decode() and "Traceback" not in result.stderr.decode()
    replaced = run_cli("translate", "--model", str(model), "--errors", "replace", cwd=reversal_run, input=bad)
    assert replaced.returncode == 0 and len(replaced.stdout.decode().splitlines()) == 2
    missing = run_cli("translate", "--model", str(reversal_run / "nope.pt"), cwd=reversal_run, input=b"a\n")
    assert missing.returncode == 2 and "no model file" in missing.stderr.decode()


def test_a_checkpoint_round_trip_translates_identically(tmp_path):
    tokenizer = reversal_tokenizer(300, 7)
    text = [s for pair in reversal_pairs(40, 8) for s in pair]
    model = tiny_model(tokenizer.vocab_size, seed=3, decoder="input_feed", attention="bahdanau")
    decode = DecodeConfig(beam_size=3)
    before = list(Translator(model, tokenizer, decode).translate_lines(text[:40]))
    save_checkpoint(tmp_path / "m.pt", model_payload(model, tokenizer))
    after = list(Translator.from_checkpoint(str(tmp_path / "m.pt"), decode).translate_lines(text[:40]))
    assert after == before
    assert any(before)  # the random model says something, so equality means something


def test_bench_quick_writes_measured_figures(reversal_run):
    import json

    result = run_cli(
        "bench",
        *REVERSAL_OVERRIDES,
        f"data.path={reversal_run / 'corpus'}",
        "run_dir=bench",
        "bench.quick=true",
        "bench.throughput_seconds=1",
        "bench.warmup_steps=2",
        "bench.variants=[fused,input_feed]",
        f"bench.checkpoint={reversal_run / 'run' / 'best.pt'}",
        cwd=reversal_run,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    fig = json.loads((reversal_run / "bench" / "bench.json").read_text())
    for variant in ("fused", "input_feed"):
        assert fig[f"train_tgt_tokens_per_s_{variant}"] > 0
        assert 0 <= fig[f"train_padding_fraction_{variant}"] < 1
        assert fig[f"train_peak_rss_mb_{variant}"] > 10
        assert fig[f"matmul_peak_gflops_{variant}"] > 1 and fig[f"train_flop_per_tgt_token_{variant}"] > 1e4
        readings = fig[f"matmul_peak_gflops_before_{variant}"], fig[f"matmul_peak_gflops_after_{variant}"]
        assert fig[f"matmul_peak_gflops_{variant}"] == max(readings)  # the higher of the two readings
        rate = fig[f"train_tgt_tokens_per_s_{variant}"]
        want = rate * fig[f"train_flop_per_tgt_token_{variant}"] / (fig[f"matmul_peak_gflops_{variant}"] * 1e9)
        assert fig[f"train_fraction_of_peak_{variant}"] == pytest.approx(want) and 0 < want < 1
        assert 0 < fig[f"train_fraction_of_fp32_peak_{variant}"] < 1
    assert fig["train_precision_fused"] in ("fp32", "bf16") and fig["train_measured_steps_fused"] >= 1
    assert fig["decode_greedy_sents_per_s"] > 0 and fig["decode_beam5_sents_per_s"] > 0
    assert fig["decode_beam5_bleu"] > 80  # the reversal model is good, so the scores are real
    assert fig["decode_beam5_process_output_identical"] is True
    for name in ("greedy_int8", "beam5_int8"):
        assert fig[f"decode_{name}_sents_per_s"] > 0 and fig[f"decode_{name}_process_output_identical"] is True
    assert abs(fig["decode_beam5_int8_bleu_delta"]) < 5  # int8 keeps the model's quality
    # bf16 is measured where decode.precision=auto would take it, and the choice is recorded with its reason
    assert fig["decode_precision_auto"] in ("fp32", "bf16") and "bf16" in fig["decode_precision_auto_reason"]
    bf16_measured = "decode_beam5_bf16_sents_per_s" in fig
    assert bf16_measured == (fig["decode_precision_auto"] == "bf16")
    if bf16_measured:
        assert fig["decode_beam5_bf16_process_output_identical"] is True
        assert abs(fig["decode_beam5_bf16_bleu_delta"]) < 5
    assert "| train_tgt_tokens_per_s |" in result.stdout.decode()
    assert "| training, share of the chosen precision's peak |" in result.stdout.decode()
    from translate.precision import cpu_name

    assert fig["machine"]["cpu"] == cpu_name() and fig["machine"]["torch"] == torch.__version__
    assert f"machine: {cpu_name()}" in result.stdout.decode()  # every table names where it was measured


def test_bench_headline_holds_each_measured_figure_against_its_goal():
    from translate.benchmark import headline

    fig = {
        "ratio_train_tgt_tokens_per_s": 4.94,
        "train_fraction_of_peak": 0.095,
        "ratio_decode_beam5_process_sents_per_s": 6.13,
        "ratio_decode_beam5_bf16_process_sents_per_s": 7.4,
        "ttb_en_de_35min_bleu": 37.85,
        "ttb_en_de_35min_updates": 6084,
        "ttb_en_de_60min_bleu": 39.48,
        "ttb_fr_en_10min_bleu": 20.0,
    }
    runs = [("en", "de", 35.0), ("de", "en", 35.0), ("en", "de", 60.0), ("fr", "en", 10.0)]  # de→en not measured
    rows = {line.split(" | ")[0].lstrip("| "): line for line in headline(fig, runs).splitlines()[2:]}
    assert rows["training tokens/s, ours / peer"].endswith("| 4.94× | ≥ 4.00× | met |")
    assert rows["training, share of the chosen precision's peak"].endswith("| 9.5% | ≥ 60.0% | **missed** |")
    assert rows["beam 5 fp32, whole process, sentences/s, ours / peer"].endswith("| **missed** |")
    assert rows["beam 5 bf16, whole process, sentences/s, ours / peer"].endswith("| 7.40× | | |")  # no goal
    assert rows["time-to-BLEU en→de, 35 minutes: test BLEU, beam 5"].endswith(
        "| 37.85 (6084 updates) | ≥ 37.50 | met |"
    )
    assert rows["time-to-BLEU en→de, 60 minutes: test BLEU, beam 5"].endswith("| 39.48 | ≥ 39.50 | **missed** |")
    assert rows["time-to-BLEU fr→en, 10 minutes: test BLEU, beam 5"].endswith("| 20.00 | | |")
    assert len(rows) == 7  # nothing for what this run did not measure (the int8 ratios, de→en)


def test_bench_full_mode_trains_each_time_to_bleu_run_and_decodes_the_configured_direction(reversal_run):
    """Full mode: one fresh training run per bench.time_to_bleu entry, at the budget it names and
    with the command line's settings, each reported with its score, updates and best validation;
    the decoding figures use the model of the configured direction, not the first run's."""
    import json

    result = run_cli(
        "bench",
        *REVERSAL_OVERRIDES,
        f"data.path={reversal_run / 'corpus'}",
        "run_dir=bench-full",
        "bench.throughput_seconds=1",
        "bench.warmup_steps=2",
        "bench.variants=[fused]",
        "bench.int8=false",
        "bench.time_to_bleu=[yy-xx:0.05,xx-yy:0.1]",
        cwd=reversal_run,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    fig = json.loads((reversal_run / "bench-full" / "bench.json").read_text())
    for tag, folder in (("yy_xx_0.05min", "ttb0.05.yy-xx"), ("xx_yy_0.1min", "ttb0.1.xx-yy")):
        checkpoint = reversal_run / "bench-full" / folder / "best.pt"
        assert fig[f"ttb_{tag}_checkpoint"] == str(Path("bench-full") / folder / "best.pt")
        ckpt = load_checkpoint(checkpoint)
        assert ckpt["model_config"]["emb_dim"] == 64  # debug=tiny reached the run: the command line's settings
        assert 1 <= fig[f"ttb_{tag}_best_valid_step"] <= fig[f"ttb_{tag}_updates"]
        assert fig[f"ttb_{tag}_best_valid_bleu"] == pytest.approx(ckpt["metrics"]["valid_bleu"])
        assert fig[f"ttb_{tag}_best_valid_beam"] == ckpt["metrics"].get("valid_beam", 1)
        assert 0 <= fig[f"ttb_{tag}_bleu"] < 100.001 and 0 < fig[f"ttb_{tag}_chrf"] < 100.001  # sacreBLEU rounding
        assert f"| ttb_{tag}_bleu |" in result.stdout.decode()
    # the runs had their own budgets: 0.1 minutes bought more updates than 0.05
    assert fig["ttb_xx_yy_0.1min_updates"] > fig["ttb_yy_xx_0.05min_updates"]
    assert fig["decode_checkpoint"] == fig["ttb_xx_yy_0.1min_checkpoint"]
    assert fig["decode_beam5_bleu"] == pytest.approx(fig["ttb_xx_yy_0.1min_bleu"])


FAKE_PEER = {
    "setup.sh": 'mkdir -p "$FAKE_WORK"; echo "venv: none   work: $FAKE_WORK   data: $DATA"\n',
    "run_throughput.sh": "echo joeynmt_train_tgt_tok_per_s 500\n",
    "run_train.sh": (
        'mkdir -p "$RUN_DIR/model"; echo weights > "$RUN_DIR/model/12.ckpt"\n'
        'echo "$BUDGET_S" >> "$FAKE_WORK/trainings"\n'
        'echo "steady state: median 600 tgt tok/s"\n'
    ),
    "run_decode.sh": (
        'mkdir -p "$FAKE_WORK/decode"; echo "$CKPT" >> "$FAKE_WORK/decoded"\n'
        "for beam in 1 5; do\n"
        '  for i in $(seq 100); do echo "A B"; done > "$FAKE_WORK/decode/test2016.beam$beam.yy"\n'
        '  echo "== beam $beam: 100 hyps; generation 2.0s = 50.0 sents/s; whole process 0:04.00 (h:mm:ss);"\n'
        '  echo "   BLEU: 1.50  nrefs:1"\n'
        "done\n"
    ),
}


def test_the_minutes_behind_a_model_are_its_whole_runs_where_recorded(tmp_path):
    """The peer trains as long as the run behind our model, not up to the step of its checkpoint."""
    from translate.benchmark import model_minutes

    tokenizer = reversal_tokenizer()
    payload = {**model_payload(tiny_model(tokenizer.vocab_size), tokenizer), "metrics": {"elapsed_min": 33.4}}
    save_checkpoint(tmp_path / "single.pt", payload)
    save_checkpoint(tmp_path / "chosen.pt", {**payload, "run_minutes": 35.02})
    save_checkpoint(tmp_path / "bare.pt", {**payload, "metrics": {}})
    assert model_minutes(tmp_path / "chosen.pt") == 35.02  # recorded by the end-of-run choice
    assert model_minutes(tmp_path / "single.pt") == 33.4  # an older model file: its validation's clock
    assert model_minutes(tmp_path / "bare.pt") is None


def test_bench_peer_decodes_a_model_trained_as_long_as_ours_and_reuses_it(reversal_run):
    """The peer side of the benchmark, with a stand-in kit that answers as the JoeyNMT kit's
    scripts do: its model is trained once for as long as ours and reused by the next run on
    the same machine, and the decoding ratios are also given in target tokens per second."""
    import json

    from translate.benchmark import model_minutes

    kit = reversal_run / "fake-peer"
    kit.mkdir(exist_ok=True)
    for name, body in FAKE_PEER.items():
        (kit / name).write_text("set -eu\n" + body, encoding="utf-8")
    work = reversal_run / "fake-peer-work"
    args = [
        "bench",
        *REVERSAL_OVERRIDES,
        f"data.path={reversal_run / 'corpus'}",
        "run_dir=bench-peer",
        "bench.quick=true",
        "bench.throughput_seconds=1",
        "bench.warmup_steps=2",
        "bench.variants=[fused]",
        "bench.int8=false",
        "bench.peer=joeynmt",
        f"bench.peer_kit={kit}",
        f"bench.checkpoint={reversal_run / 'run' / 'best.pt'}",
    ]
    env_work = {"FAKE_WORK": str(work)}
    # the reversal model trains for seconds (minutes on a loaded machine): the peer's model gets as
    # many whole minutes, at least one, and is trained once
    our_minutes = model_minutes(reversal_run / "run" / "best.pt")
    whole = max(1, round(our_minutes))
    for attempt in range(2):
        result = run_cli(*args, cwd=reversal_run, env=env_work)
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        fig = json.loads((reversal_run / "bench-peer" / "bench.json").read_text())
        assert (work / "trainings").read_text().split() == [str(whole * 60)], f"run {attempt + 1}"
        assert fig["peer_decode_model_minutes"] == whole and fig["decode_model_minutes"] == pytest.approx(our_minutes)
        assert fig["peer_decode_model"].endswith(f"joeynmt.{whole}min/model/12.ckpt")
        # trained now: the training's own throughput; reused: the probe measures it in this run
        peer_rate = 600 if attempt == 0 else 500
        assert fig["peer_train_tgt_tokens_per_s"] == peer_rate
        assert fig["ratio_train_tgt_tokens_per_s"] == pytest.approx(fig["train_tgt_tokens_per_s"] / peer_rate)
        assert fig["peer_decode_beam5_sents_per_s"] == 50 and fig["peer_decode_beam5_process_sents_per_s"] == 25
        # "A B" is two pieces in the reversal model's SentencePiece: 2 tokens a sentence
        assert fig["peer_decode_beam5_tgt_tokens_per_sent"] == 2
        assert fig["peer_decode_beam5_tgt_tokens_per_s"] == pytest.approx(100)
        ours = fig["decode_beam5_tgt_tokens_per_s"]
        assert fig["ratio_decode_beam5_tgt_tokens_per_s"] == pytest.approx(ours / 100)
        assert fig["ratio_decode_beam5_process_sents_per_s"] == pytest.approx(
            fig["decode_beam5_process_sents_per_s"] / 25
        )
    assert len((work / "decoded").read_text().splitlines()) == 2
    # a peer model trained on another machine (the same CPU name without bf16 arithmetic, say) is
    # another yardstick: this machine trains its own
    (record_file,) = reversal_run.glob("**/peer/joeynmt.1min/peer.json")
    record = json.loads(record_file.read_text())
    assert record["machine"].startswith("machine: ")  # this machine, as the tables name it
    record_file.write_text(json.dumps({**record, "machine": "machine: Another CPU (avx2), 2 cores, torch 0"}))
    result = run_cli(*args, cwd=reversal_run, env=env_work)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert "was trained on another machine (Another CPU (avx2), 2 cores, torch 0)" in result.stderr.decode()
    assert (work / "trainings").read_text().split() == ["60", "60"]
    assert json.loads(record_file.read_text())["machine"] == record["machine"]
