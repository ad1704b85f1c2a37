"""int8 decoding: close to fp32, and a sentence's result never depends on its batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from translate.config import DecodeConfig, ModelConfig
from translate.model import Seq2Seq
from translate.quantize import Int8GRUStep, Int8Linear, int8_available, quantize_decoder
from translate.translator import Translator

from .conftest import reversal_pairs, run_cli

if not int8_available():  # pragma: no cover - x86 torch builds all have fbgemm
    pytest.skip("this torch build has no fbgemm int8 kernels", allow_module_level=True)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_close_to_fp32(bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias)
    x = torch.randn(7, 5, 96)
    with torch.no_grad():
        assert relative_error(Int8Linear.from_linear(linear)(x), linear(x)) < 0.02


def test_int8_linear_rows_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    q = Int8Linear.from_linear(nn.Linear(64, 32))
    x = torch.randn(9, 64)
    x[3] *= 100  # one loud row: with a per-batch activation scale it would coarsen the others
    together = q(x)
    for i in range(len(x)):
        assert torch.equal(q(x[i : i + 1])[0], together[i])


@pytest.mark.parametrize("layers", [1, 2])
def test_int8_gru_step_matches_the_gru(layers):
    torch.manual_seed(0)
    gru = nn.GRU(24, 48, num_layers=layers, batch_first=True)
    x, h = torch.randn(6, 1, 24), torch.randn(layers, 6, 48)
    with torch.no_grad():
        ref_out, ref_h = gru(x, h)
        out, new_h = Int8GRUStep(gru)(x, h)
    assert out.shape == ref_out.shape and new_h.shape == ref_h.shape
    assert relative_error(out, ref_out) < 0.02 and relative_error(new_h, ref_h) < 0.02
    with pytest.raises(ValueError, match="one time step"):
        Int8GRUStep(gru)(torch.randn(6, 2, 24), h)


@pytest.mark.parametrize("decoder", ["fused", "input_feed"])
@pytest.mark.parametrize("attention", ["general", "bahdanau", "multihead"])
def test_quantize_decoder_replaces_every_decoder_product_and_leaves_the_original(decoder, attention):
    cfg = ModelConfig(emb_dim=16, enc_hidden=16, dec_hidden=16, attn_dim=16, decoder=decoder, attention=attention)
    model = Seq2Seq(cfg, vocab_size=30).eval()
    q = quantize_decoder(model)
    assert not any(isinstance(m, (nn.Linear, nn.GRU)) for m in q.decoder.modules())
    assert isinstance(q.encoder.rnn, nn.GRU)  # the encoder runs once per sentence and stays fp32
    assert isinstance(model.decoder.output, nn.Linear) and isinstance(model.decoder.rnn, nn.GRU)
    tokens = torch.tensor([4, 5, 6])
    src, lengths = torch.tensor([[7, 8, 9, 3]] * 3), torch.tensor([4, 3, 2])
    with torch.no_grad():
        memory, state = q.encode(src, lengths)
        log_probs, _ = q.decode_step(tokens, state, memory)
        ref_memory, ref_state = model.encode(src, lengths)
        reference, _ = model.decode_step(tokens, ref_state, ref_memory)
    assert log_probs.shape == (3, 30)
    # the int8 step computes the fp32 step's distribution, to int8 accuracy
    assert (log_probs.exp() - reference.exp()).abs().max() < 0.01
    assert relative_error(log_probs, reference) < 0.02


def test_int8_refuses_a_model_that_is_not_on_the_cpu():
    model = Seq2Seq(ModelConfig(emb_dim=8, enc_hidden=8, dec_hidden=8, attn_dim=8), vocab_size=20).to("meta")
    with pytest.raises(RuntimeError, match="CPU only"):
        quantize_decoder(model)


@pytest.mark.slow
def test_int8_translates_like_fp32_and_the_same_alone_or_in_a_batch(reversal_run):
    ckpt = str(reversal_run / "run" / "best.pt")
    src = [s for s, _ in reversal_pairs(120, seed=7)]
    fp32 = list(Translator.from_checkpoint(ckpt, DecodeConfig(beam_size=3)).translate_lines(src))
    int8 = Translator.from_checkpoint(ckpt, DecodeConfig(beam_size=3, int8=True, batch_size=32))
    together = list(int8.translate_lines(src))
    agreement = sum(a == b for a, b in zip(together, fp32)) / len(src)
    assert agreement >= 0.9, f"int8 and fp32 agree on {agreement:.2f} of the lines"
    alone = [next(int8.translate_lines([s])) for s in src[:30]]
    assert alone == together[:30]

    result = run_cli("translate", "--model", ckpt, "--beam", "3", "--int8", cwd=reversal_run, input=b"a b c\n\nd e\n")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split("\n") == [together_line(int8, "a b c"), "", together_line(int8, "d e"), ""]


def together_line(translator: Translator, line: str) -> str:
    return next(translator.translate_lines([line]))
