"""The training GRU (translate/gru.py) against nn.GRU: the same outputs, final states and
gradients, over padded batches as nn.GRU gives over packed ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import translate.decoder
import translate.encoder
import translate.gru
from translate.batching import make_batch
from translate.config import ModelConfig
from translate.gru import gru, use_training_gru
from translate.model import Seq2Seq


def packed_reference(rnn: nn.GRU, x, h0, lengths):
    if lengths is None:
        return rnn(x, h0)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, h = rnn(packed, h0)
    return pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0], h


def case(bidirectional: bool, layers: int, with_lengths: bool, with_h0: bool, seed: int = 0):
    torch.manual_seed(seed)
    rnn = nn.GRU(6, 8, num_layers=layers, batch_first=True, bidirectional=bidirectional)
    for p in rnn.parameters():
        nn.init.normal_(p, std=0.5)  # larger than the default, so every gate matters
    x = torch.randn(5, 7, 6, requires_grad=True)
    directions = 2 if bidirectional else 1
    h0 = torch.randn(layers * directions, 5, 8, requires_grad=True) if with_h0 else None
    lengths = torch.tensor([7, 3, 7, 1, 5]) if with_lengths else None
    inputs = [x] + ([h0] if with_h0 else []) + list(rnn.parameters())
    return rnn, x, h0, lengths, inputs


CASES = [
    (True, 1, True, False),  # the encoder: bidirectional over padded sentences
    (False, 1, False, True),  # the fused decoder: from the bridge's state, every position computed
    (True, 2, True, True),
    (False, 2, True, False),
]


@pytest.mark.parametrize("bidirectional, layers, with_lengths, with_h0", CASES)
def test_outputs_final_states_and_gradients_equal_nn_gru(bidirectional, layers, with_lengths, with_h0):
    rnn, x, h0, lengths, inputs = case(bidirectional, layers, with_lengths, with_h0)
    ref_out, ref_h = packed_reference(rnn, x, h0, lengths)
    out, h = gru(rnn, x, h0, lengths)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h, ref_h, atol=1e-5, rtol=1e-4)
    if lengths is not None:
        assert torch.all(out[1, 3:] == 0) and torch.all(out[3, 1:] == 0)  # padding, as unpacked
    weights_out, weights_h = torch.randn_like(out), torch.randn_like(h)
    ref = torch.autograd.grad((ref_out * weights_out).sum() + (ref_h * weights_h).sum(), inputs)
    mine = torch.autograd.grad((out * weights_out).sum() + (h * weights_h).sum(), inputs)
    for name, g, r in zip(["x", "h0"][: 1 + bool(with_h0)] + [n for n, _ in rnn.named_parameters()], mine, ref):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"d/d{name}: {m}")
    if lengths is not None:
        assert torch.all(mine[0][3, 1:] == 0)  # padding gets no gradient


@pytest.mark.parametrize("bidirectional, layers, with_lengths, with_h0", CASES[:2])
def test_bf16_products_keep_the_state_in_fp32_and_stay_close(bidirectional, layers, with_lengths, with_h0):
    rnn, x, h0, lengths, inputs = case(bidirectional, layers, with_lengths, with_h0, seed=1)
    ref_out, ref_h = packed_reference(rnn, x, h0, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = gru(rnn, x, h0, lengths)
    assert out.dtype == h.dtype == torch.float32
    assert 0 < (out - ref_out).abs().max() < 0.05  # rounded (the products ran in bf16), and only a little
    loss = (out * torch.arange(out.numel()).view_as(out).sin()).sum() + h.sum()
    ref_loss = (ref_out * torch.arange(out.numel()).view_as(out).sin()).sum() + ref_h.sum()
    for g, r in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref_loss, inputs)):
        assert g.dtype == torch.float32
        assert F.cosine_similarity(g.flatten(), r.flatten(), dim=0) > 0.999


def test_it_refuses_a_gru_it_does_not_run():
    with pytest.raises(ValueError, match="batch-first"):
        gru(nn.GRU(4, 4), torch.randn(3, 2, 4))


@pytest.mark.parametrize("decoder", ["fused", "input_feed"])
def test_the_model_trains_with_it_and_decodes_with_nn_gru(decoder, monkeypatch):
    """In training (with gradients) the encoder and the fused decoder run translate.gru, and
    the model's loss and gradients are those of nn.GRU; evaluation runs nn.GRU."""
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(emb_dim=16, enc_hidden=16, dec_hidden=16, dropout=0.0, decoder=decoder), 30).train()
    batch = make_batch([[5, 6, 7, 8], [9, 10], [11, 12, 13]], [[14, 15, 16], [17], [18, 19, 20, 21, 22]])
    calls = []
    real = translate.gru._GRULayer.apply
    monkeypatch.setattr(translate.gru._GRULayer, "apply", lambda *a: calls.append(a[-3]) or real(*a))  # reverse
    loss = model.loss(batch)[0]
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # the encoder's two directions, the fused decoder's one
    assert calls == ([False, True, False] if decoder == "fused" else [False, True])
    calls.clear()
    for module in (translate.encoder, translate.decoder):
        monkeypatch.setattr(module, "use_training_gru", lambda rnn: False)
    ref_loss = model.loss(batch)[0]
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    assert calls == []
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_inference_and_evaluation_run_nn_gru():
    rnn = nn.GRU(4, 4, batch_first=True)
    assert use_training_gru(rnn)
    with torch.no_grad():
        assert not use_training_gru(rnn)
    assert not use_training_gru(rnn.eval())
