"""Dropout from random bits (translate/dropout.py): the rate, the scale, the gradient, the seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from translate.config import ModelConfig
from translate.dropout import Dropout, dropout
from translate.model import Seq2Seq

N = 400_000  # elements: the share dropped is then within 0.004 of p (5 standard deviations at p = 0.5)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.6])
def test_each_element_is_dropped_with_probability_p_and_the_rest_scaled_to_keep_the_mean(p):
    torch.manual_seed(0)
    out = dropout(torch.ones(N), p)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - p) < 0.004
    kept = out[~dropped]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-4)
    assert abs(out.mean().item() - 1) < 0.01


def test_every_lane_of_a_random_word_draws_the_same_rate():
    # four mask elements share a 64-bit draw: each 16-bit lane must be uniform (torch's default
    # random_() leaves a draw's top bit 0, which would keep 80% of one lane in four at p = 0.6)
    torch.manual_seed(1)
    dropped = (dropout(torch.ones(N), 0.6) == 0).view(-1, 4).float().mean(0)
    assert torch.all((dropped - 0.6).abs() < 0.008), dropped


def test_neighbouring_elements_are_dropped_independently():
    torch.manual_seed(2)
    keep = (dropout(torch.ones(N), 0.5) != 0).float()
    both = (keep[1:] * keep[:-1]).mean().item()
    assert abs(both - 0.25) < 0.005


def test_the_gradient_flows_through_the_kept_elements_scaled():
    torch.manual_seed(3)
    x = (torch.rand(64, 33) + 0.5).requires_grad_()  # no zero inputs: zeros in the output are drops
    out = dropout(x, 0.3)
    out.sum().backward()
    assert torch.equal(x.grad, (out != 0).float() / (1 - round(0.3 * 65536) / 65536))
    assert 0 < (out == 0).sum() < out.numel()


def test_the_seed_decides_the_mask():
    x = torch.ones(1000)
    masks = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        masks.append(dropout(x, 0.4) == 0)
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


def test_evaluation_and_p_zero_leave_the_input_as_it_is_and_p_one_drops_everything():
    x = torch.randn(5, 7)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.5).eval()
    assert module(x) is x


def test_bf16_stays_bf16_and_odd_sizes_are_covered():
    torch.manual_seed(4)
    x = torch.ones(3, 5, 7, dtype=torch.bfloat16)  # 105 elements: not a multiple of the 4 per draw
    out = dropout(x, 0.5)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert set(out.unique().tolist()) <= {0.0, 2.0}


def test_the_model_drops_through_it_and_its_state_dict_is_unchanged():
    model = Seq2Seq(ModelConfig(emb_dim=16, enc_hidden=16, dec_hidden=16, attn_dim=16, dropout=0.3), 50)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(isinstance(m, Dropout) for m in dropouts)
    assert not any("dropout" in key for key in model.state_dict())
