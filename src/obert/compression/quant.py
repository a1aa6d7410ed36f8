"""obert's INT8 scheme, defined once: what the INT8 kernels compute and what QAT simulates.

Weights: symmetric per output row,   s_w[n] = max_k |W[n, k]| / 127,  W_q = round(W / s_w) ∈ [−127, 127].
Activations: symmetric per token (dynamic), s_x[m] = max_k |x[m, k]| / 127,
             x_q = round(x · 127 / max|x[m]|) ∈ [−127, 127].
Output:      y[m, n] = s_w[n] · s_x[m] · Σ_k x_q[m, k] · W_q[n, k] + b[n]   (the sum exact in int32).

Rounding is half to even (torch.round; the kernels' std::nearbyint). The runtime's packing
(``obert.runtime.pack``) takes ``quantize_rows`` from here, and ``FakeQuantLinear`` computes the
same numbers in float with a straight-through estimator for training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

QMAX = 127


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: W ≈ s_w[n]·W_q[n, k]; returns (W_q int8, s_w float32)."""
    amax = weight.abs().amax(1)
    sw = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    wq = torch.round(weight / sw[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return wq, sw.float()


def quantize_tokens(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-token int8 of the last dimension, as the kernels' prepare step does it:
    q = round(x · 127/max|x|) (multiplied by the inverse, not divided by the scale);
    returns (q as float in [−127, 127], s_x = max|x|/127, shaped [..., 1])."""
    amax = x.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, QMAX / amax, torch.zeros_like(amax))
    q = torch.round(x * inv).clamp_(-QMAX, QMAX)
    return q, amax / QMAX


def fake_quant_weight(weight: Tensor) -> Tensor:
    """s_w·W_q in float: the weight the INT8 kernel multiplies by."""
    wq, sw = quantize_rows(weight)
    return wq.to(weight.dtype) * sw.to(weight.dtype)[:, None]


def fake_quant_tokens(x: Tensor) -> Tensor:
    """s_x·x_q in float: the activations the INT8 kernel multiplies by."""
    q, sx = quantize_tokens(x)
    return q * sx


def ste(x: Tensor, quantized: Tensor) -> Tensor:
    """Straight-through estimator: the value of ``quantized``, the gradient of ``x``."""
    return x + (quantized - x).detach()


class FakeQuantLinear(nn.Module):
    """A Linear that computes what obert's INT8 kernel computes (up to float summation order),
    with straight-through gradients to its float weight and input. Pruned zeros stay zeros:
    round(0) = 0."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    def forward(self, x: Tensor) -> Tensor:
        w = ste(self.linear.weight, fake_quant_weight(self.linear.weight))
        return nn.functional.linear(ste(x, fake_quant_tokens(x)), w, self.linear.bias)
