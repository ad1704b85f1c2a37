"""Label-smoothed cross-entropy (Szegedy et al. 2016, sec. 7), summed over non-pad tokens.

    loss = (1 - eps) * nll + eps * mean_v(-log p_v)

:func:`label_smoothed_loss` is the plain form, on logits. :func:`output_layer_loss` fuses
the output projection with the loss: it walks over the tokens in chunks and produces the
gradients for the hidden states and the projection matrix on the way, so the (N, V)
logits never exist at once. On a CPU this removes most of the time a training step spends
outside matrix products (allocating, zero-filling and re-reading N x V buffers).
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
    def forward(ctx, hidden, weight, target, epsilon: float, needs_grad: bool):
        vocab = weight.size(0)
        loss = hidden.new_zeros((), dtype=torch.float64)
        nll = hidden.new_zeros((), dtype=torch.float64)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight) if needs_grad else None
        for start in range(0, hidden.size(0), CHUNK_TOKENS):
            h, y = hidden[start : start + CHUNK_TOKENS], target[start : start + CHUNK_TOKENS]
            keep = (y != PAD).to(hidden.dtype)
            logits = h @ weight.t()  # (n, V)
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            token_nll = lse - logits.gather(1, y.unsqueeze(1)).squeeze(1)
            token_smooth = lse - logits.mean(dim=-1)
            loss += (((1 - epsilon) * token_nll + epsilon * token_smooth) * keep).sum().double()
            nll += (token_nll * keep).sum().double()
            if needs_grad:  # d loss / d logits = softmax - (1 - eps) * onehot(y) - eps / V, 0 on padding
                g = logits.sub_(lse.unsqueeze(1)).exp_().sub_(epsilon / vocab)
                g.scatter_add_(1, y.unsqueeze(1), g.new_full((y.numel(), 1), epsilon - 1.0))
                g.mul_(keep.unsqueeze(1))
                torch.mm(g, weight, out=grad_hidden[start : start + CHUNK_TOKENS])
                grad_weight.addmm_(g.t(), h)
        ctx.mark_non_differentiable(nll)
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight)
        return loss.float(), nll.float()

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None


def output_layer_loss(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (B, T, D) pre-output states, weight (V, D), target (B, T) ->
    (smoothed loss, nll) summed over non-pad tokens; the same values as
    ``label_smoothed_loss(hidden @ weight.T, target, epsilon)``, computed in fp32."""
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    flat = hidden.reshape(-1, hidden.size(-1)).float()
    return _OutputLayerLoss.apply(flat, weight.float(), target.reshape(-1), epsilon, needs_grad)
