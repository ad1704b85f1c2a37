"""The GRU recurrence for training, with a backward pass that makes its weight gradients
in one matrix product per layer and direction instead of one per time step.

``nn.GRU`` on a CPU runs PyTorch's per-time-step kernel, and autograd records each step's
operations: the backward pass then makes a small weight-gradient product and a weight-gradient
addition per step, and under bf16 autocast casts the recurrent weights again at every step
(README, "Where a bf16 training step goes"). Here a time step is what it has to be, one
(B x H) by (H x 3H) product and a handful of elementwise operations on the cached rows of
that step, forward and back; every product that does not lie on the recurrence runs once
over all T x B rows: the input projection before the loop, the weight, bias and input
gradients after it.

The gates are PyTorch's (``nn.GRU``'s documentation; Cho et al. 2014), over the same
parameters, so a model trains with this and decodes with ``nn.GRU``:

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

Padding (a batch's sentences of different lengths) is a mask: at a padded step the state is
carried unchanged, so the forward direction ends at each sentence's last token and the
backward direction starts at it, exactly as over a packed sequence. With bf16 products the
state, the gates and every sum stay fp32; only the matrix products' inputs are bf16.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from translate.dropout import dropout


def use_training_gru(rnn: nn.GRU) -> bool:
    """Whether `rnn` runs here: in training, with gradients. Inference (validation, search)
    runs ``nn.GRU`` itself, whose packed sequences keep a translation independent of its batch."""
    return rnn.training and torch.is_grad_enabled()


def products_dtype(device: torch.device) -> torch.dtype:
    """bf16 where bf16 autocast is on for `device` (the learner's bf16 precision), else fp32."""
    if torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def gru(
    rnn: nn.GRU, x: torch.Tensor, h0: torch.Tensor | None = None, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rnn``'s recurrence over a padded batch, for training.

    x (B, T, I) batch-first, h0 (L*D, B, H) or None (zeros), lengths (B,) or None (every
    position real) -> outputs (B, T, D*H), zero at padded positions, and final states
    (L*D, B, H), each sentence's at its last real token (D = 2 where ``rnn`` is bidirectional).
    The products run in bf16 where bf16 autocast is on, else in fp32."""
    if not (rnn.batch_first and rnn.bias and rnn.proj_size == 0):
        raise ValueError("translate.gru.gru runs a batch-first nn.GRU with biases and no projection")
    products = products_dtype(x.device)
    directions = 2 if rnn.bidirectional else 1
    batch, steps = x.size(0), x.size(1)
    mask, partial = None, [False] * steps  # partial[t]: step t has a padded row (known once, on the host)
    if lengths is not None:  # (T, B, 1): 1 at a real position, 0 at padding
        mask = (torch.arange(steps, device=x.device)[:, None] < lengths.to(x.device)[None, :]).unsqueeze(-1).float()
        shortest = int(lengths.min())
        partial = [t >= shortest for t in range(steps)]
    if h0 is None:
        h0 = x.new_zeros(rnn.num_layers * directions, batch, rnn.hidden_size, dtype=torch.float32)
    layer_input = x.transpose(0, 1).float()  # (T, B, I): time-major inside
    finals = []
    with torch.autocast(x.device.type, enabled=False):
        for layer in range(rnn.num_layers):
            if layer > 0 and rnn.dropout > 0:
                layer_input = dropout(layer_input, rnn.dropout, rnn.training)
            outs = []
            for d in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                weights = [getattr(rnn, f"{name}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                out, final = _GRULayer.apply(
                    layer_input, h0[layer * directions + d], mask, *weights, bool(d), partial, products
                )
                outs.append(out)
                finals.append(final)
            layer_input = torch.cat(outs, dim=-1) if directions == 2 else outs[0]
    out = layer_input if mask is None else layer_input * mask
    return out.transpose(0, 1), torch.stack(finals)


class _GRULayer(torch.autograd.Function):
    """One layer, one direction, time-major: x (T, B, I), h0 (B, H), mask (T, B, 1) or None;
    partial[t]: whether step t has a padded row (then its update is masked)."""

    @staticmethod
    def forward(ctx, x, h0, mask, w_ih, w_hh, b_ih, b_hh, reverse: bool, partial: list[bool], products: torch.dtype):
        steps, batch, _ = x.shape
        hidden = w_hh.size(1)
        wi, wh = w_ih.to(products), w_hh.to(products)
        # the input projection of every step at once, with both biases of r and z folded in
        bias = torch.cat([b_ih[: 2 * hidden] + b_hh[: 2 * hidden], b_ih[2 * hidden :]])
        x_p = x.reshape(steps * batch, -1).to(products)
        gi = torch.addmm(bias.to(products), x_p, wi.t())
        gi = gi.view(steps, batch, 3 * hidden)
        rz = x.new_empty(steps, batch, 2 * hidden)  # sigmoid gates r, z
        ghn = x.new_empty(steps, batch, hidden)  # W_hn h + b_hn
        n = x.new_empty(steps, batch, hidden)
        hs = x.new_empty(steps, batch, hidden)  # the state after each step
        hs_p = x.new_empty(steps, batch, hidden, dtype=products)  # the same, as product input
        h, h_p = h0.float(), h0.to(products)
        for t in _order(steps, reverse):
            gh = (h_p @ wh.t()).float()  # (B, 3H): the step's one product
            torch.add(gh[:, 2 * hidden :], b_hh[2 * hidden :], out=ghn[t])
            torch.sigmoid(gh[:, : 2 * hidden].add_(gi[t, :, : 2 * hidden]), out=rz[t])
            r, z = rz[t, :, :hidden], rz[t, :, hidden:]
            torch.tanh(torch.addcmul(gi[t, :, 2 * hidden :], r, ghn[t]), out=n[t])
            if partial[t]:
                torch.lerp(h, torch.lerp(n[t], h, z), mask[t], out=hs[t])  # padded rows keep h
            else:
                torch.lerp(n[t], h, z, out=hs[t])  # (1 - z) n + z h
            h = hs[t]
            hs_p[t].copy_(h)
            h_p = hs_p[t]
        ctx.save_for_backward(h0, mask, hs)
        ctx.stash = rz, ghn, n, hs_p, x_p, wi, wh  # the products' operands, cast once
        ctx.x_shape, ctx.reverse, ctx.partial, ctx.products = x.shape, reverse, partial, products
        return hs, h.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs, d_final):
        h0, mask, hs = ctx.saved_tensors
        rz, ghn, n, hs_p, x_p, wi, wh = ctx.stash
        ctx.stash = None
        products, reverse, partial = ctx.products, ctx.reverse, ctx.partial
        steps, batch, hidden = hs.shape
        r, z = rz[..., :hidden], rz[..., hidden:]
        start = h0.float()
        d_gh = hs.new_empty(steps, batch, 3 * hidden, dtype=products)  # d (W_h h + b_h)
        d_gin = hs.new_empty(steps, batch, hidden, dtype=products)  # d (W_in x + b_in)
        dh = d_final.float() if d_final is not None else hs.new_zeros(batch, hidden)
        order = _order(steps, reverse)
        for i in range(steps - 1, -1, -1):
            t = order[i]
            h_prev = hs[order[i - 1]] if i else start
            through = dh + d_hs[t] if d_hs is not None else dh  # dh where it enters the step's update
            if partial[t]:
                carried = through * (1 - mask[t])  # a padded row passes dh by unchanged
                through = through * mask[t]
            # the gate gradients: d h' / d (r, z, n pre-activations) of h' = (1 - z) n + z h, times dh
            one_minus_z = 1 - z[t]
            d_n = torch.addcmul(one_minus_z, one_minus_z, n[t] * n[t], value=-1).mul_(through)  # (1 - z)(1 - n^2) dh
            d_gin[t].copy_(d_n)
            d_n.mul_(r[t])
            d_gh[t, :, 2 * hidden :].copy_(d_n)  # ... r
            torch.mul(d_n, torch.addcmul(ghn[t], ghn[t], r[t], value=-1), out=d_gh[t, :, :hidden])  # ... (1 - r) gh_n
            torch.mul((h_prev - n[t]).mul_(through), one_minus_z.mul_(z[t]), out=d_gh[t, :, hidden : 2 * hidden])
            dh = through * z[t] if not partial[t] else torch.addcmul(carried, through, z[t])
            dh += d_gh[t] @ wh
        # d (W_i x + b_i): as d_gh for r and z, its own for n
        d_gin = d_gin.view(steps * batch, hidden)
        d_gh = d_gh.view(steps * batch, 3 * hidden)
        d_girz = d_gh[:, : 2 * hidden]
        h_prev = _shift(hs_p, h0.to(products), reverse).view(steps * batch, hidden)  # the state each step read
        d_w_hh = (d_gh.t() @ h_prev).float()
        d_w_ih = torch.cat([d_girz.t() @ x_p, d_gin.t() @ x_p]).float()
        d_x = torch.addmm(d_girz @ wi[: 2 * hidden], d_gin, wi[2 * hidden :]).float().view(ctx.x_shape)
        d_b_hh = d_gh.sum(0).float()  # (a sum over bf16 accumulates in fp32)
        d_b_ih = torch.cat([d_b_hh[: 2 * hidden], d_gin.sum(0).float()])
        return d_x, dh.to(h0.dtype), None, d_w_ih, d_w_hh, d_b_ih, d_b_hh, None, None, None


def _order(steps: int, reverse: bool) -> list[int]:
    return list(range(steps - 1, -1, -1) if reverse else range(steps))


def _shift(hs: torch.Tensor, h0: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The state before each step: h0, then hs shifted by one step in the direction of time."""
    if reverse:
        return torch.cat([hs[1:], h0.unsqueeze(0)])
    return torch.cat([h0.unsqueeze(0), hs[:-1]])
