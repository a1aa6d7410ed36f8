"""obert's INT8 scheme, defined once: what the INT8 kernels compute and what QAT simulates.

Weights: symmetric per output row,   s_w[n] = max_k |W[n, k]| / 127,  W_q = round(W / s_w) ∈ [−127, 127].
Activations: symmetric per token (dynamic), s_x[m] = max_k |x[m, k]| / 127,
             x_q = round(x · 127 / max|x[m]|) ∈ [−127, 127].
Output:      y[m, n] = s_w[n] · s_x[m] · Σ_k x_q[m, k] · W_q[n, k] + b[n]   (the sum exact in int32).

Attention (``int8_attention``), per sequence and head, q/k/v [L, D]:
             s_q[i] = max|q[i]|/127, s_k[j] = max|k[j]|/127 (per token), s_v[d] = max_j |v[j, d]|/127
             (per head dimension, over the keys some query may attend: not padding);
             z[i, j] = scaling · s_q[i] · s_k[j] · Σ_d q_q[i, d] k_q[j, d] + mask[i, j];
             P_q[i, j] = round(255 · exp(z[i, j] − max_j z[i, :])) ∈ [0, 255];
             out[i, d] = s_v[d] / Σ_j P_q[i, j] · Σ_j P_q[i, j] v_q[j, d].

Rounding is half to even (torch.round; the kernels' std::nearbyint). The runtime's packing
(``obert.runtime.pack``) takes ``quantize_rows`` from here, and ``FakeQuantLinear`` computes the
same numbers in float with a straight-through estimator for training.

Which layers and attentions are INT8, and with which scales, is decided once per model by
``obert.compression.plan.int8_plan``; QAT, ``compile`` and the ONNX export read that plan.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

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


def on_grid(weight: Tensor, scale: Tensor, tol: float = 1e-3) -> bool:
    """Whether ``weight`` is still s_w·W_q for these per-row scales, as QAT left it:
    |W/s_w − round(W/s_w)| ≤ ``tol`` and |W/s_w| ≤ 127.5 everywhere, with every s_w > 0 and
    finite. Scales that fail it would clamp or re-round the weights silently."""
    s = scale.to(weight.dtype).reshape(-1, 1)
    if not bool(torch.isfinite(s).all() and (s > 0).all()):
        return False
    r = weight / s
    return bool(((r - torch.round(r)).abs() <= tol).all() and (r.abs() <= QMAX + 0.5).all())


def quantize_tokens(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-token int8 of the last dimension, as the kernels' prepare step does it:
    q = round(x · 127/max|x|) (multiplied by the inverse, not divided by the scale);
    returns (q as float in [−127, 127], s_x = max|x|/127, shaped [..., 1])."""
    amax = x.abs().amax(-1, keepdim=True)
    q = torch.round(x * _inv_scale(amax)).clamp_(-QMAX, QMAX)
    return q, amax / QMAX


def _inv_scale(amax: Tensor) -> Tensor:
    """127/max|x| (0 where max|x| is 0) as one division, as the kernels compute it
    (``QMAX / amax`` would be torch's reciprocal times 127, one ulp off for about a quarter
    of the tokens)."""
    return torch.where(amax > 0, torch.full_like(amax, QMAX) / amax, torch.zeros_like(amax))


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
        # fp32 outside autocast, as the kernels compute: under bf16/fp16 autocast s_w·W_q and
        # s_x·x_q would be rounded to 8 mantissa bits, far off the INT8 numbers
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf, wf = x.float(), self.weight.float()
            w = ste(wf, fake_quant_weight(wf))
            bias = None if self.bias is None else self.bias.float()
            y = nn.functional.linear(ste(xf, fake_quant_tokens(xf)), w, bias)
        return y.to(x.dtype)


def _ste_exact(x: Tensor, q: Tensor) -> Tensor:
    """Exactly the value of ``q`` (x − x is 0 in float), the gradient of ``x``."""
    return x - x.detach() + q


def _quant_sym(x: Tensor, dim: int, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric int8 along ``dim`` as float: (x_q, s) with x ≈ s · x_q; x_q carries the
    gradient of x / s (straight through), s none. ``keep`` (bool, broadcastable to x): the
    entries that set the scale (the others are quantized with it, clamped)."""
    ax = x.detach().abs()
    amax = (ax if keep is None else ax * keep).amax(dim, keepdim=True)
    xn = x * _inv_scale(amax)
    return _ste_exact(xn, torch.round(xn.detach()).clamp_(-QMAX, QMAX)), amax / QMAX


NEVER_ATTENDED = -1e30  # an additive mask at or below it gives a key exactly 0 probability


def attended_keys(mask: Tensor | None) -> Tensor | None:
    """[..., L_k, 1] bool: the keys some query may attend (padding keys are not), from a mask
    [..., L_q, L_k] as ``int8_attention`` takes it; None for no mask (all keys)."""
    if mask is None:
        return None
    keep = mask if mask.dtype == torch.bool else mask > NEVER_ATTENDED
    return keep.any(-2)[..., None]


def int8_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                   scaling: float = 1.0, dropout: float = 0.0) -> Tensor:
    """Self-attention in obert's INT8 scheme (module docstring): q, k, v [B, H, L, D];
    ``mask`` broadcastable to [B, H, L, L], bool (True: attend) or additive float; returns
    [B, H, L, D]. The numbers the runtime's attention kernel computes, exactly (the integer
    sums are exact in float32 below 2^24: D · 127² for QKᵀ, L · 255 · 127 for P·V, L ≤ 518);
    with straight-through gradients for QAT, where ``dropout`` (training only) drops
    probabilities as transformers does. A row with every key masked out gives zeros."""
    qq, sq = _quant_sym(q.float(), -1)  # [B, H, L, 1]
    kq, sk = _quant_sym(k.float(), -1)
    vq, sv = _quant_sym(v.float(), -2, attended_keys(mask))  # scales [B, H, 1, D]
    c = sq * torch.tensor(scaling, dtype=torch.float32)
    z = (qq @ kq.transpose(-1, -2)) * c * sk.transpose(-1, -2)
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else z + mask
    zmax = z.detach().amax(-1, keepdim=True)
    e = 255 * torch.exp(z - torch.where(torch.isinf(zmax), torch.zeros_like(zmax), zmax))
    p = _ste_exact(e, torch.round(e.detach()))
    psum = p.sum(-1, keepdim=True)
    inv = torch.where(psum > 0, 1 / psum.clamp_min(1), torch.zeros_like(psum))
    if dropout > 0:
        p = nn.functional.dropout(p, dropout, training=True)
    return (p @ vq) * sv * inv


QAT_ATTENTION = "obert_int8"


def _qat_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                   attention_mask: Tensor | None, scaling: float | None = None,
                   dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function signature around ``int8_attention``; returns
    [B, L, H, D] as its own implementations do."""
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # under mixed precision the integer sums must stay float32 (bf16 cannot hold them exactly)
    with torch.autocast(device_type=query.device.type, enabled=False):
        out = int8_attention(query, key, value, attention_mask, scale,
                             dropout if module.training else 0.0)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def simulate_int8_attention(model: nn.Module, on: bool = True) -> bool:
    """Make ``model``'s attention compute ``int8_attention`` (QAT), or give back the
    implementation it had; registered with transformers' AttentionInterface (with sdpa's mask).
    Returns False, changing nothing, for a model that cannot switch its attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        return False
    AttentionInterface.register(QAT_ATTENTION, _qat_attention)
    AttentionMaskInterface.register(QAT_ATTENTION, sdpa_mask)
    current = config._attn_implementation
    if on and current != QAT_ATTENTION:
        model.obert_attn_before = current
        model.set_attn_implementation(QAT_ATTENTION)
    elif not on and current == QAT_ATTENTION:
        model.set_attn_implementation(getattr(model, "obert_attn_before", None) or "sdpa")
    # transformers only warns when a model cannot switch: say whether it did
    return (config._attn_implementation == QAT_ATTENTION) == on


def int8_attention_bound(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                         scaling: float = 1.0) -> Tensor:
    """An upper bound on |int8_attention − fp32 attention| per output element [B, H, L, D],
    from rounding alone (each rounded value is within half a step):

    logits:  ε_i = scaling · max_j (s_k[j]/2 · ‖q_i‖₁ + s_q[i]/2 · ‖k_q[j]‖₁ · s_k[j]);
    softmax: exp(±2ε) moves each probability by at most a factor, Σ_j |p'−p| ≤ e^{2ε} − 1;
    P to 8 bits: Σ_j |p̂−p'| ≤ n / Σ_j P_q, Σ_j P_q ≥ 255 · e^{−2ε} · Σ_j exp(z_j − max z) − n/2,
             n the keys left unmasked;
    values:  s_v[d]/2, and Σ_j |p̂ − p| · max_j |v[j, d]|."""
    q, k, v = q.float(), k.float(), v.float()
    _, sq = _quant_sym(q, -1)
    kq, sk = _quant_sym(k, -1)
    keys = attended_keys(mask)
    _, sv = _quant_sym(v, -2, keys)
    eps = scaling * (sk.transpose(-1, -2) / 2 * q.abs().sum(-1, keepdim=True)
                     + sq / 2 * (kq.abs().sum(-1) * sk[..., 0])[..., None, :])  # [B, H, L, L]
    z = (q @ k.transpose(-1, -2)) * scaling
    keep = torch.ones_like(z, dtype=torch.bool)
    if mask is not None:
        keep = keep & mask if mask.dtype == torch.bool else keep & (mask > NEVER_ATTENDED)
        z = z.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else z + mask
    eps = eps.masked_fill(~keep, 0).amax(-1, keepdim=True)
    n = keep.sum(-1, keepdim=True).float()
    zsum = torch.exp(z - z.amax(-1, keepdim=True)).nan_to_num(0).sum(-1, keepdim=True)
    psum_lo = (255 * torch.exp(-2 * eps) * zsum - n / 2).clamp_min(1.0)
    tv = torch.expm1(2 * eps) + n / psum_lo  # Σ_j |p̂ − p|
    vmax = (v.abs() if keys is None else v.abs() * keys).amax(-2, keepdim=True)
    return tv * vmax + sv / 2


# --- which layers, and QAT in and out -------------------------------------------------------


def swap_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule ``name``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


@torch.no_grad()
def convert_qat(model: nn.Module) -> dict[str, Tensor]:
    """Back to plain Linears whose weights are exactly the dequantized INT8 values s_w·W_q
    (zeros stay zeros), and the attention it had before; returns the weight scales s_w by
    module name."""
    simulate_int8_attention(model, False)
    scales = {}
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, FakeQuantLinear):
            continue
        wq, sw = quantize_rows(mod.weight.detach().float())
        mod.weight.copy_((wq.float() * sw[:, None]).to(mod.weight.dtype))
        lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                        device="meta")
        lin.weight, lin.bias = mod.weight, mod.bias
        swap_module(model, name, lin)
        scales[name] = sw
    return scales
