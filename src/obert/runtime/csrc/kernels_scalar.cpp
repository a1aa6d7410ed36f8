// Portable kernels: the fallback on any CPU and the reference the vector versions must match.
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace obert {

float gelu_ref(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

namespace {

#include "tiling.h"  // with_u, for the attention driver

constexpr int kTok = 16;

inline float finish(float acc, int64_t m, int64_t n, const Out& o) {
  float v = acc + (o.bias ? o.bias[n] : 0.0f);
  if (o.act == 1) v = gelu_ref(v);
  return o.res ? v + o.res[m * o.ldr + n] : v;
}

void f32_prepare(const float* x, int64_t M, int64_t K, int64_t ldx, float* xt, int64_t Kp,
                 int64_t k0, int64_t k1) {
  const int64_t tiles = (M + kTok - 1) / kTok;
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t k = k0; k < k1; ++k) {
      float* dst = xt + (t * Kp + k) * kTok;
      for (int64_t j = 0; j < kTok; ++j) dst[j] = t * kTok + j < M ? x[(t * kTok + j) * ldx + k] : 0.0f;
    }
}

void f32_spmm(const float* xt, int64_t Kp, const SpF32& w, const Out& o, int64_t n_groups,
              int64_t i0, int64_t i1) {
  float acc[kTok];
  for (int64_t it = i0; it < i1; ++it) {
    const int64_t m0 = (it / n_groups) * kTok, g = it % n_groups;
    const int64_t mt = (o.M - m0) < kTok ? (o.M - m0) : kTok;
    const float* tile = xt + (it / n_groups) * Kp * kTok;
    for (int64_t n = g * kRowGroup; n < (g + 1) * kRowGroup && n < o.N; ++n) {
      std::memset(acc, 0, sizeof(acc));
      for (int32_t j = w.row_ptr[n]; j < w.row_ptr[n + 1]; ++j) {
        for (int b = 0; b < w.bs; ++b) {
          const float v = w.val[(int64_t)j * w.bs + b];
          const float* xp = tile + (int64_t)(w.col[j] + b) * kTok;
          for (int t = 0; t < kTok; ++t) acc[t] += xp[t] * v;
        }
      }
      for (int64_t t = 0; t < mt; ++t) o.y[(m0 + t) * o.ldy + n] = finish(acc[t], m0 + t, n, o);
    }
  }
}

void i8_prepare(const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* x4, float* sx,
                int64_t m0, int64_t m1) {
  const int64_t K4 = (K + 3) / 4;
  for (int64_t m = m0; m < m1; ++m) {
    float amax = 0.0f;
    if (m < M)
      for (int64_t k = 0; k < K; ++k) amax = std::fmax(amax, std::fabs(x[m * ldx + k]));
    sx[m] = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t kb = 0; kb < K4; ++kb) {
      uint8_t* dst = x4 + (((m / kTok) * K4 + kb) * kTok + m % kTok) * 4;
      for (int i = 0; i < 4; ++i) {
        const int64_t k = kb * 4 + i;
        float q = (m < M && k < K) ? std::nearbyint(x[m * ldx + k] * inv) : 0.0f;
        q = std::fmin(127.0f, std::fmax(-127.0f, q));
        dst[i] = (uint8_t)((int)q + 128);
      }
    }
  }
}

void i8_spmm(const uint8_t* x4, int64_t K4, const float* sx, const SpI8& w, const Out& o,
             int64_t n_groups, int64_t i0, int64_t i1) {
  int32_t acc[kTok];
  for (int64_t it = i0; it < i1; ++it) {
    const int64_t m0 = (it / n_groups) * kTok, g = it % n_groups;
    const int64_t mt = (o.M - m0) < kTok ? (o.M - m0) : kTok;
    const uint8_t* tile = x4 + (it / n_groups) * K4 * kTok * 4;
    for (int64_t n = g * kRowGroup; n < (g + 1) * kRowGroup && n < o.N; ++n) {
      std::memset(acc, 0, sizeof(acc));
      for (int32_t j = w.row_ptr[n]; j < w.row_ptr[n + 1]; ++j) {
        const int8_t* wb = reinterpret_cast<const int8_t*>(w.wq + j);
        const uint8_t* xp = tile + (int64_t)(w.col[j] / 4) * kTok * 4;
        for (int t = 0; t < kTok; ++t)
          for (int i = 0; i < 4; ++i) acc[t] += ((int32_t)xp[t * 4 + i] - 128) * wb[i];
      }
      for (int64_t t = 0; t < mt; ++t)
        o.y[(m0 + t) * o.ldy + n] = finish((float)acc[t] * (w.sw[n] * sx[m0 + t]), m0 + t, n, o);
    }
  }
}

// --- attention primitives (attention.h) ---------------------------------------------------

float att_absmax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(x[i]));
  return m;
}

void att_quant(const float* x, int64_t n, float inv, const float* inv_col, int8_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const float q = std::nearbyint(x[i] * (inv_col ? inv_col[i] : inv));
    dst[i] = (int8_t)std::fmin(127.0f, std::fmax(-127.0f, q));
  }
}

template <int NQ>
void att_qk(const int8_t* q, int64_t Dp, const int8_t* k4, const int32_t*, int64_t Lp, int32_t* s) {
  for (int r = 0; r < NQ; ++r)
    for (int64_t j = 0; j < Lp; ++j) {
      int32_t acc = 0;
      for (int64_t d = 0; d < Dp; ++d) acc += (int32_t)q[r * Dp + d] * k4[((d / 4) * Lp + j) * 4 + d % 4];
      s[r * Lp + j] = acc;
    }
}

int32_t att_softmax(float* f, int64_t Lp, uint8_t* p) {
  float m = -INFINITY;
  for (int64_t j = 0; j < Lp; ++j) m = std::fmax(m, f[j]);
  if (m == -INFINITY) {
    std::memset(p, 0, Lp);
    return 0;
  }
  int32_t sum = 0;
  for (int64_t j = 0; j < Lp; ++j) {
    p[j] = (uint8_t)std::nearbyint(255.0f * std::exp(f[j] - m));
    sum += p[j];
  }
  return sum;
}

template <int NQ>
void att_pv(const uint8_t* p, int64_t Lp, const int8_t* v4, int64_t Dp, int32_t* o) {
  for (int r = 0; r < NQ; ++r)
    for (int64_t d = 0; d < Dp; ++d) {
      int32_t acc = 0;
      for (int64_t j = 0; j < Lp; ++j) acc += (int32_t)p[r * Lp + j] * v4[((j / 4) * Dp + d) * 4 + j % 4];
      o[r * Dp + d] = acc;
    }
}

void att_interleave4(const int8_t* rows, int64_t Dp, int8_t* dst) {
  for (int64_t d = 0; d < Dp; ++d)
    for (int r = 0; r < 4; ++r) dst[d * 4 + r] = rows[r * Dp + d];
}

#include "attention.h"

const Isa kScalar = {"scalar", kTok, f32_prepare, f32_spmm, i8_prepare, i8_spmm, i8_attention};

}  // namespace

const Isa* isa_scalar() { return &kScalar; }

}  // namespace obert
