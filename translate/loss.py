"""Label-smoothed cross-entropy (Szegedy et al. 2016, sec. 7), summed over non-pad tokens.

    loss = (1 - eps) * nll + eps * mean_v(-log p_v)

:func:`label_smoothed_loss` is the plain form, on logits. :func:`output_layer_loss` fuses
the output projection with the loss: it walks over the tokens in chunks and produces the
gradients for the hidden states and the projection matrix on the way, so the (N, V)
logits never exist at once. On a CPU this removes most of the time a training step spends
outside matrix products (allocating, zero-filling and re-reading N x V buffers).

Its three matrix products (logits, and the gradients of the states and of the matrix)
run in `products`: fp32, or bf16 when training runs under bf16 autocast, as autocast
would run an ``nn.Linear``; on a CPU with AMX that makes them 5-10x faster. The softmax,
the loss and the sums stay in fp32 either way, and so do the accumulated gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from translate.tokenizer import PAD

CHUNK_TOKENS = 512  # 512 x 8000 fp32 logits = 16 MB per chunk


def label_smoothed_loss(
    logits: torch.Tensor, target: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, T, V), target (B, T) -> (smoothed loss, nll), both summed over non-pad tokens."""
    log_probs = F.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))
    target = target.reshape(-1)
    keep = target != PAD
    nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)[keep].sum()
    smooth = -log_probs[keep].mean(dim=-1).sum() if epsilon > 0 else nll.new_zeros(())
    return (1 - epsilon) * nll + epsilon * smooth, nll


class _OutputLayerLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, epsilon: float, needs_grad: bool, products: torch.dtype):
        vocab = weight.size(0)
        loss = hidden.new_zeros((), dtype=torch.float64)
        nll = hidden.new_zeros((), dtype=torch.float64)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight) if needs_grad else None
        w = weight.to(products)  # bf16 products: the operands cast once, the results back to fp32
        for start in range(0, hidden.size(0), CHUNK_TOKENS):
            h, y = hidden[start : start + CHUNK_TOKENS].to(products), target[start : start + CHUNK_TOKENS]
            keep = (y != PAD).to(hidden.dtype)
            logits = (h @ w.t()).float()  # (n, V)
            target_logit = logits.gather(1, y.unsqueeze(1)).squeeze(1)  # (n,)
            mean_logit = logits.mean(dim=-1)
            top = logits.amax(dim=-1, keepdim=True)  # (n, 1)
            p = logits.sub_(top).exp_()  # in place: exp(logit - max), the softmax's numerators
            total = p.sum(dim=-1)
            lse = top.squeeze(1) + total.log()  # logsumexp, with no N x V pass of its own
            token_nll = lse - target_logit
            token_smooth = lse - mean_logit
            loss += (((1 - epsilon) * token_nll + epsilon * token_smooth) * keep).sum().double()
            nll += (token_nll * keep).sum().double()
            if needs_grad:  # d loss / d logits = softmax - (1 - eps) * onehot(y) - eps / V, 0 on padding
                g = p.mul_((keep / total).unsqueeze(1)).sub_((keep * (epsilon / vocab)).unsqueeze(1))
                g.scatter_add_(1, y.unsqueeze(1), (keep * (epsilon - 1.0)).unsqueeze(1))
                g = g.to(products)
                grad_hidden[start : start + CHUNK_TOKENS] = g @ w
                grad_weight += g.t() @ h  # summed in fp32
        ctx.mark_non_differentiable(nll)
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight)
        return loss.float(), nll.float()

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None, None


def output_layer_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    epsilon: float,
    *,
    products: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (B, T, D) pre-output states, weight (V, D), target (B, T) ->
    (smoothed loss, nll) summed over non-pad tokens, in fp32; with fp32 `products` the same
    values as ``label_smoothed_loss(hidden @ weight.T, target, epsilon)``."""
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    flat = hidden.reshape(-1, hidden.size(-1)).float()
    with torch.autocast(hidden.device.type, enabled=False):  # the products' precision is said here
        return _OutputLayerLoss.apply(flat, weight.float(), target.reshape(-1), epsilon, needs_grad, products)
