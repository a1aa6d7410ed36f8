"""obert's INT8 scheme, defined once: what the INT8 kernels compute and what QAT simulates.

Weights: symmetric per output row,   s_w[n] = max_k |W[n, k]| / 127,  W_q = round(W / s_w) ∈ [−127, 127].
Activations: symmetric per token (dynamic), s_x[m] = max_k |x[m, k]| / 127,
             x_q = round(x · 127 / max|x[m]|) ∈ [−127, 127].
Output:      y[m, n] = s_w[n] · s_x[m] · Σ_k x_q[m, k] · W_q[n, k] + b[n]   (the sum exact in int32).

Rounding is half to even (torch.round; the kernels' std::nearbyint). The runtime's packing
(``obert.runtime.pack``) takes ``quantize_rows`` from here, and ``FakeQuantLinear`` computes the
same numbers in float with a straight-through estimator for training.

Which layers are INT8 is decided here too (``int8_linears``): the encoder's Linears, the ones
pruning targets. Embeddings, pooler and task head stay fp32, in QAT and in ``compile``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from obert.errors import ObertError

QMAX = 127
SCHEME = ("int8: weights symmetric per output row, activations symmetric per token (dynamic), "
          "int32 sums")


def quantize_rows(weight: Tensor, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: W ≈ s_w[n]·W_q[n, k]; returns (W_q int8, s_w float32).

    ``scale``: trained s_w to use instead of max|W[n]|/127 (a QAT model's weights are exactly
    s_w·W_q, so either gives the same W_q)."""
    if scale is None:
        amax = weight.abs().amax(1)
        sw = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    else:
        sw = scale.to(device=weight.device, dtype=weight.dtype).reshape(-1)
    wq = torch.round(weight / sw[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return wq, sw.float()


def quantize_tokens(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-token int8 of the last dimension, as the kernels' prepare step does it:
    q = round(x · 127/max|x|) (multiplied by the inverse, not divided by the scale);
    returns (q as float in [−127, 127], s_x = max|x|/127, shaped [..., 1])."""
    amax = x.abs().amax(-1, keepdim=True)
    # 127/max|x| as one division, as the kernels compute it (``QMAX / amax`` would be
    # torch's reciprocal times 127, one ulp off for about a quarter of the tokens)
    inv = torch.where(amax > 0, torch.full_like(amax, QMAX) / amax, torch.zeros_like(amax))
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


class FakeQuantLinear(nn.Linear):
    """A Linear that computes what obert's INT8 kernel computes (up to float summation order),
    with straight-through gradients to its float weight and input. Pruned zeros stay zeros:
    round(0) = 0.

    ``from_linear`` shares the Linear's parameters (same tensors, same state-dict names), so
    an optimizer, a MaskSet's hooks and DDP keep working when it replaces the Linear mid-run.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FakeQuantLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        w = ste(self.weight, fake_quant_weight(self.weight))
        return nn.functional.linear(ste(x, fake_quant_tokens(x)), w, self.bias)


# --- which layers, and QAT in and out -------------------------------------------------------


def int8_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linears that run in INT8 (name -> module): the encoder's, as pruning finds them."""
    from obert.pruning.targets import find_targets

    try:
        return find_targets(model)
    except ObertError:
        raise ObertError(f"{type(model).__name__} has no encoder Linear layers to quantize "
                         "(none inside a numbered layer stack): INT8 needs a BERT-like "
                         "encoder") from None


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def prepare_qat(model: nn.Module) -> list[str]:
    """Replace every INT8 Linear by a ``FakeQuantLinear`` on the same parameters (in place);
    returns their names. Idempotent."""
    names = []
    for name, lin in int8_linears(model).items():
        if not isinstance(lin, FakeQuantLinear):
            _swap(model, name, FakeQuantLinear.from_linear(lin))
        names.append(name)
    return names


@torch.no_grad()
def convert_qat(model: nn.Module) -> dict[str, Tensor]:
    """Back to plain Linears whose weights are exactly the dequantized INT8 values s_w·W_q
    (zeros stay zeros); returns the weight scales s_w by module name."""
    scales = {}
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, FakeQuantLinear):
            continue
        wq, sw = quantize_rows(mod.weight.detach().float())
        mod.weight.copy_((wq.float() * sw[:, None]).to(mod.weight.dtype))
        lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                        device="meta")
        lin.weight, lin.bias = mod.weight, mod.bias
        _swap(model, name, lin)
        scales[name] = sw
    return scales


def int8_cost_note(model: nn.Module) -> str | None:
    """A line when unstructured sparsity is read by the INT8 kernels, which skip 4-blocks only:
    how many multiply-adds the sparsity saves, and how many the kernels still do."""
    from obert.runtime.compile import weight_stats  # compile's own reading of the densities

    nz = nb = total = 0.0
    for lin in int8_linears(model).values():
        d1, d4 = weight_stats(lin.weight)
        n = lin.weight.numel()
        nz, nb, total = nz + d1 * n, nb + d4 * n, total + n
    if nz == total or nb <= 1.05 * nz:
        return None
    return (f"the INT8 kernels skip whole 4-blocks: these masks keep {nz / total:.1%} of the "
            f"encoder's weights but {nb / total:.1%} of its 4-blocks, so INT8 runs "
            f"{nb / max(nz, 1):.2f}x the multiply-adds the sparsity implies (prune with mask "
            "block4 for the full INT8 speed-up)")
