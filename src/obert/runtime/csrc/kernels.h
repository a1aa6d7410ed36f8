// Sparse-weight x dense-activation kernels, one implementation per instruction set.
//
// Shapes: x is [M tokens][K inputs] (row stride ldx), the sparse weight W is [N outputs][K] and
// y = x W^T + b is [M][N] (row stride ldy). This header is plain C++ (no torch) so that the
// per-ISA files can be compiled with their own target flags without touching torch's inlines.
//
// Weight format (packed by obert/runtime/pack.py), "blocked CSR": output rows are padded to a
// multiple of 16; row n owns blocks row_ptr[n] .. row_ptr[n+1]-1; block j starts at input
// column col[j] and covers bs consecutive inputs (bs = 1 unstructured, 4 = oBERT's block4).
//   fp32: val[j*bs + i] is the weight of input col[j] + i.
//   int8: bs is always 4 and col[j] is a multiple of 4; wq[j] packs the 4 int8 weights
//         (little-endian, input col[j] in the low byte); per-row scales sw[n] and
//         wsum[n] = sum of the row's int8 weights (for the unsigned-activation correction).
//
// Activation layouts built by the prepare functions, tile-major: tokens are cut into tiles of
// T = Isa::tok_tile (the last one zero-padded) and each tile is contiguous, so a work item
// reads one compact slab instead of rows a power-of-two stride apart (which alias in cache).
//   fp32: xt[tile][Kp][T]        Kp = K rounded up to 4 (rows past K are zero)
//   int8: x4[tile][K/4][T][4]    uint8 = int8 + 128, 4 consecutive inputs of a token together,
//         with the per-token scale sx[m] = max|x[m,:]| / 127.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace obert {

constexpr int kRowGroup = 16;  // output rows per tile; N is padded to a multiple of this

struct SpF32 {
  const int32_t* row_ptr;
  const int32_t* col;
  const float* val;
  int bs;  // 1 or 4
};

struct SpI8 {
  const int32_t* row_ptr;
  const int32_t* col;
  const int32_t* wq;
  const float* sw;
  const int32_t* wsum;
  // AVX-512: walk two output rows side by side (the same sums; a kernel may ignore it)
  bool pair_rows = true;
};

// y[m][n] = act(sum + bias[n]) + res[m][n]: the residual is added last, as the transformer
// block adds its input to the output projection's result (the same float ops in that order).
struct Out {
  float* y;
  int64_t M, N, ldy;
  const float* bias;  // may be null
  int act;            // 0: none, 1: GELU (erf)
  const float* res = nullptr;  // residual [M][ldr], may be null
  int64_t ldr = 0;
};

// Self-attention in INT8 (obert.compression.quant.int8_attention is the reference): for batch b
// and head h, with q, k, v the head's D columns of L consecutive rows,
//   s[i, j] = scaling * s_q[i] * s_k[j] * sum_d q_q[i, d] k_q[j, d] + mask[i, j]
//   p_q[i, j] = round(255 * exp(s[i, j] - max_j s[i, :]))          (uint8)
//   out[i, d] = s_v[d] / sum_j p_q[i, j] * sum_j p_q[i, j] v_q[j, d]
// q and k per row (token and head), v per column (head dimension, over the keys that some query
// may attend: padding keys do not count): symmetric int8, the sums exact in int32. A row whose
// keys are all masked out (-inf) gives zeros.
struct Attn {
  const float *q, *k, *v;  // [B * L][ld*]; head h at columns h * D .. h * D + D - 1
  int64_t ldq, ldk, ldv;
  int64_t B, L, H, D;
  const float* fmask;    // additive (0 / -inf or a large negative), or null
  const uint8_t* bmask;  // 1: attend, 0: masked out, or null
  int64_t mb, mh, mq;    // mask strides over batch, head, query (keys contiguous)
  float scaling;
  float* out;  // [B * L][ldo], head h at columns h * D ..
  int64_t ldo;
};

struct Isa {
  const char* name;
  int tok_tile;  // tokens per work item (a multiple of 16)
  // xt rows k in [k0, k1) of every tile (tokens >= M are zero); k0 is a multiple of 16
  void (*f32_prepare)(const float* x, int64_t M, int64_t K, int64_t ldx, float* xt, int64_t Kp,
                      int64_t k0, int64_t k1);
  // y for token tile t and row group g, items [i0, i1) with item = t * n_groups + g
  void (*f32_spmm)(const float* xt, int64_t Kp, const SpF32& w, const Out& o, int64_t n_groups,
                   int64_t i0, int64_t i1);
  // per-token quantisation of tokens [m0, m1) (multiples of 16) into x4 and sx (tokens >= M
  // are zero)
  void (*i8_prepare)(const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* x4, float* sx,
                     int64_t m0, int64_t m1);
  void (*i8_spmm)(const uint8_t* x4, int64_t K4, const float* sx, const SpI8& w, const Out& o,
                  int64_t n_groups, int64_t i0, int64_t i1);
  // heads bh in [bh0, bh1), bh = b * H + h
  void (*i8_attention)(const Attn& a, int64_t bh0, int64_t bh1);
};

const Isa* isa_scalar();
const Isa* isa_avx2();    // null when not compiled in (non-x86 builds)
const Isa* isa_avx512();  // AVX-512 F/BW/VL/DQ + VNNI

// GELU with the exact erf, as torch.nn.functional.gelu(approximate="none")
float gelu_ref(float x);

}  // namespace obert
