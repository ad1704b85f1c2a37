"""int8 CPU decoding: the decoder's matrix products in int8, batch-invariant.

Weights are quantized once, per output channel (symmetric int8); activations are
quantized on the fly, one scale per row. The int8 products run on torch's own
`quantized::linear_dynamic` kernels (fbgemm), which quantize their input with one scale
for the whole tensor. That would make a sentence's translation depend on the other
sentences in its batch, so each row is first divided by its largest magnitude and two
anchor rows [1, 0, ...] and [-1, 0, ...] are appended: the tensor range is then always
[-1, 1], the kernel's scale is the same for every batch, and each row comes out as if
quantized alone. Integer accumulation is exact, so a sentence decodes the same alone or
in any batch, as in fp32.

Only the decoder is quantized: the search calls it once per output token for every
hypothesis, while the encoder runs once per sentence and stays fp32.

Why these kernels, measured on test2016 (README, int8 decoding): on a CPU torchao 0.18's
dynamic int8 config multiplies in int32 (11 sentences/s with beam 5, fp32 does 103), and
its weight-only int8 is slower than fp32; ONNX Runtime's int8
kernels are fast, but called per layer from the search loop they gave 111 sentences/s
against 140 here. torch 2.13 marks quantized tensors as deprecated; when a release
drops them, `int8_available()` turns False and --int8 says so instead of failing.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from translate.model import Seq2Seq


def int8_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


class Int8Linear(nn.Module):
    """y = x W^T + b with W in int8 (per output channel) and x quantized per row."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float().cpu()
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        with warnings.catch_warnings():  # the deprecation of quantized tensors: see the module docstring
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w, scale, torch.zeros(w.size(0), dtype=torch.long), 0, torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qw, None)
        self.in_features, self.out_features = w.size(1), w.size(0)
        self.register_buffer("bias", None if bias is None else bias.detach().float().cpu().clone())
        anchor = torch.zeros(2, self.in_features)
        anchor[0, 0], anchor[1, 0] = 1.0, -1.0
        self.register_buffer("anchor", anchor)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features).float()
        peak = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        y = torch.ops.quantized.linear_dynamic(torch.cat([x / peak, self.anchor]), self._packed, True)
        y = y[:-2].mul_(peak)
        if self.bias is not None:
            y.add_(self.bias)
        return y.view(*shape[:-1], self.out_features)


class Int8GRUStep(nn.Module):
    """One time step of a (multi-layer, unidirectional, batch_first) nn.GRU in int8.

    Called like the GRU it replaces, with a single step: x (B, 1, I), h (L, B, H).
    """

    def __init__(self, gru: nn.GRU) -> None:
        super().__init__()
        if gru.bidirectional or not gru.batch_first:
            raise ValueError("Int8GRUStep replaces a unidirectional batch_first GRU")
        self.ih = nn.ModuleList()
        self.hh = nn.ModuleList()
        for layer in range(gru.num_layers):
            self.ih.append(Int8Linear(getattr(gru, f"weight_ih_l{layer}"), getattr(gru, f"bias_ih_l{layer}", None)))
            self.hh.append(Int8Linear(getattr(gru, f"weight_hh_l{layer}"), getattr(gru, f"bias_hh_l{layer}", None)))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.size(1) != 1:
            raise ValueError(f"Int8GRUStep runs one time step at a time, got {x.size(1)}")
        inp, out = x[:, 0], []
        for layer, (ih, hh) in enumerate(zip(self.ih, self.hh)):
            prev = h[layer]
            i_r, i_z, i_n = ih(inp).chunk(3, dim=-1)
            h_r, h_z, h_n = hh(prev).chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            inp = n + z * (prev - n)  # (1 - z) * n + z * prev
            out.append(inp)
        return inp.unsqueeze(1), torch.stack(out)


def quantize_decoder(model: Seq2Seq) -> Seq2Seq:
    """A copy of `model` for CPU inference with every decoder matrix product in int8."""
    if not int8_available():
        raise RuntimeError(
            "int8 decoding needs torch's fbgemm kernels (x86 CPUs), which this torch build lacks: decode without --int8"
        )
    if next(model.parameters()).device.type != "cpu":
        raise RuntimeError("int8 decoding runs on the CPU only: use --device cpu, or decode on the GPU without --int8")
    model = copy.deepcopy(model).eval()
    decoder = model.decoder
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    decoder.rnn = Int8GRUStep(decoder.rnn)
    return model
