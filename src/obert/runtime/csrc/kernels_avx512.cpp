// AVX-512 kernels (F/BW/VL/DQ for fp32, VNNI vpdpbusd for int8). Compiled for that target only
// inside this file; obert picks them at run time when the CPU reports the features.
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")

namespace obert {
namespace {

#include "tiling.h"

constexpr int kTok = 64;  // tokens per work item: 4 vectors of 16

// 16x16 transpose of r[0..15] (row i -> column i), in place.
inline void tr16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
    r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD);
  }
}

// exp for x <= 0 (Cephes polynomial, 2^n by scalef); relative error ~1e-7.
inline __m512 exp_neg(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// GELU(x) = x/2 (1 + erf(x/sqrt2)); erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
inline __m512 gelu(__m512 x) {
  const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
  const __m512 a = _mm512_abs_ps(z);
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                                 _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 e = exp_neg(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a));
  __m512 erf_abs = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.0f));
  // erf is odd: copy the sign of z
  const __m512 sign = _mm512_and_ps(z, _mm512_castsi512_ps(_mm512_set1_epi32(0x80000000)));
  const __m512 erf = _mm512_or_ps(erf_abs, sign);
  return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)),
                       _mm512_add_ps(erf, _mm512_set1_ps(1.0f)));
}

inline __mmask16 nmask(const Out& o, int64_t n0) {
  const int64_t left = o.N - n0;
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

// Write a 16-row x (16*U)-token tile held in buf[row][tokens] (row stride kTok) to y[m][n].
// fin(v, m) gives the final value of one token's vector of 16 rows before bias and activation.
template <typename Fin>
inline void store_tile(const float* buf, int U, int64_t m0, int64_t n0, const Out& o, Fin fin) {
  const __mmask16 mk = nmask(o, n0);
  const __m512 bias = o.bias ? _mm512_maskz_loadu_ps(mk, o.bias + n0) : _mm512_setzero_ps();
  __m512 r[16];
  for (int u = 0; u < U; ++u) {
    for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(buf + i * kTok + 16 * u);
    tr16(r);
    for (int t = 0; t < 16; ++t) {
      const int64_t m = m0 + 16 * u + t;
      if (m >= o.M) return;
      __m512 v = _mm512_add_ps(fin(r[t], m), bias);
      if (o.act == 1) v = gelu(v);
      _mm512_mask_storeu_ps(o.y + m * o.ldy + n0, mk, v);
    }
  }
}

void f32_prepare(const float* x, int64_t M, int64_t K, int64_t ldx, float* xt, int64_t Kp,
                 int64_t k0, int64_t k1) {
  __m512 r[16];
  const int64_t tiles = (M + kTok - 1) / kTok;
  for (int64_t kk = k0; kk < k1; kk += 16) {
    const int64_t kn = (k1 - kk) < 16 ? (k1 - kk) : 16;
    const __mmask16 km = kn == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << kn) - 1u);
    for (int64_t mm = 0; mm < tiles * kTok; mm += 16) {
      for (int i = 0; i < 16; ++i)
        r[i] = (mm + i < M) ? _mm512_maskz_loadu_ps(km, x + (mm + i) * ldx + kk)
                            : _mm512_setzero_ps();
      tr16(r);
      float* dst = xt + ((mm / kTok) * Kp + kk) * kTok + mm % kTok;
      for (int64_t i = 0; i < kn; ++i) _mm512_store_ps(dst + i * kTok, r[i]);
    }
  }
}

template <int U, int BS>
void f32_tile(const float* tile, const SpF32& w, int64_t n0, float* buf) {
  for (int r = 0; r < 16; ++r) {
    __m512 a[U];
    for (int u = 0; u < U; ++u) a[u] = _mm512_setzero_ps();
    const int32_t j1 = w.row_ptr[n0 + r + 1];
    for (int32_t j = w.row_ptr[n0 + r]; j < j1; ++j) {
      const float* xp = tile + (int64_t)w.col[j] * kTok;
      const float* v = w.val + (int64_t)j * BS;
      for (int b = 0; b < BS; ++b) {
        const __m512 vb = _mm512_set1_ps(v[b]);
        for (int u = 0; u < U; ++u)
          a[u] = _mm512_fmadd_ps(_mm512_loadu_ps(xp + b * kTok + 16 * u), vb, a[u]);
      }
    }
    for (int u = 0; u < U; ++u) _mm512_store_ps(buf + r * kTok + 16 * u, a[u]);
  }
}

void f32_spmm(const float* xt, int64_t Kp, const SpF32& w, const Out& o, int64_t n_groups,
              int64_t i0, int64_t i1) {
  alignas(64) float buf[16 * kTok];
  for (int64_t it = i0; it < i1; ++it) {
    const Item t = item_at<kTok, 16>(it, n_groups, o.M);
    const float* tile = xt + t.tile * Kp * kTok;
    with_u(t.U, [&](auto u) {
      if (w.bs == 4)
        f32_tile<decltype(u)::value, 4>(tile, w, t.n0, buf);
      else
        f32_tile<decltype(u)::value, 1>(tile, w, t.n0, buf);
    });
    store_tile(buf, t.U, t.m0, t.n0, o, [](__m512 v, int64_t) { return v; });
  }
}

void i8_prepare(const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* x4, float* sx,
                int64_t m0, int64_t m1) {
  const int64_t K4 = (K + 3) / 4;
  for (int64_t m = m0; m < m1; ++m) {
    float amax = 0.0f;
    if (m < M) {
      __m512 mx = _mm512_setzero_ps();
      for (int64_t k = 0; k < K; k += 16) {
        const int64_t kn = (K - k) < 16 ? (K - k) : 16;
        const __mmask16 km = kn == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << kn) - 1u);
        mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_loadu_ps(km, x + m * ldx + k)));
      }
      amax = _mm512_reduce_max_ps(mx);
    }
    sx[m] = amax / 127.0f;
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    for (int64_t k = 0; k < 4 * K4; k += 16) {
      const int64_t kn = m < M ? ((K - k) < 16 ? (K - k) : 16) : 0;
      const __mmask16 km = kn >= 16 ? (__mmask16)0xFFFF
                                    : (kn <= 0 ? (__mmask16)0 : (__mmask16)((1u << kn) - 1u));
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(km, x + m * ldx + k), inv));
      q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
      q = _mm512_add_epi32(q, _mm512_set1_epi32(128));
      alignas(16) uint32_t g[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(g), _mm512_cvtepi32_epi8(q));
      for (int i = 0; i < 4 && k / 4 + i < K4; ++i)
        *reinterpret_cast<uint32_t*>(x4 + (((m / kTok) * K4 + k / 4 + i) * kTok + m % kTok) * 4) = g[i];
    }
  }
}

template <int U>
void i8_tile(const uint8_t* tile, const SpI8& w, int64_t n0, int32_t* buf) {
  for (int r = 0; r < 16; ++r) {
    __m512i a[U];
    for (int u = 0; u < U; ++u) a[u] = _mm512_setzero_si512();
    const int32_t j1 = w.row_ptr[n0 + r + 1];
    for (int32_t j = w.row_ptr[n0 + r]; j < j1; ++j) {
      const uint8_t* xp = tile + (int64_t)(w.col[j] >> 2) * kTok * 4;
      const __m512i wb = _mm512_set1_epi32(w.wq[j]);
      for (int u = 0; u < U; ++u)
        a[u] = _mm512_dpbusd_epi32(a[u], _mm512_loadu_si512(xp + 64 * u), wb);
    }
    for (int u = 0; u < U; ++u) _mm512_store_si512(buf + r * kTok + 16 * u, a[u]);
  }
}

void i8_spmm(const uint8_t* x4, int64_t K4, const float* sx, const SpI8& w, const Out& o,
             int64_t n_groups, int64_t i0, int64_t i1) {
  alignas(64) int32_t buf[16 * kTok];
  for (int64_t it = i0; it < i1; ++it) {
    const Item t = item_at<kTok, 16>(it, n_groups, o.M);
    const uint8_t* tile = x4 + t.tile * K4 * kTok * 4;
    with_u(t.U, [&](auto u) { i8_tile<decltype(u)::value>(tile, w, t.n0, buf); });
    // acc over uint8 (x + 128) activations: subtract 128 * sum(w) to get the signed product.
    const __mmask16 mk = nmask(o, t.n0);
    const __m512i corr = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mk, w.wsum + t.n0), 7);
    const __m512 sw = _mm512_maskz_loadu_ps(mk, w.sw + t.n0);
    store_tile(reinterpret_cast<const float*>(buf), t.U, t.m0, t.n0, o, [&](__m512 v, int64_t m) {
      const __m512i acc = _mm512_sub_epi32(_mm512_castps_si512(v), corr);
      return _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(sw, _mm512_set1_ps(sx[m])));
    });
  }
}

const Isa kAvx512 = {"avx512", kTok, f32_prepare, f32_spmm, i8_prepare, i8_spmm};

}  // namespace
}  // namespace obert

#pragma GCC pop_options

namespace obert {
const Isa* isa_avx512() { return &kAvx512; }
}  // namespace obert

#else
namespace obert {
const Isa* isa_avx512() { return nullptr; }
}  // namespace obert
#endif
