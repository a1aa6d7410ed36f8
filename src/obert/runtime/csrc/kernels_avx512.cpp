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
#include "att_x86.h"

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
  // t = 1 / den by rcp14 and one Newton step (error ~1e-7, a division costs ~4x more here)
  const __m512 den = _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f));
  __m512 t = _mm512_rcp14_ps(den);
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(den, t, _mm512_set1_ps(2.0f)));
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
      if (o.res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, o.res + m * o.ldr + n0));
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

// 16 tokens at a time (m0, m1 multiples of 16): each token's 16 inputs become 16 bytes (4
// groups of 4), and a 16 x 4 transpose of those int32 groups gives, per group, the 16 tokens'
// 4 bytes side by side: one whole 64-byte line of the tile per store, not 16 scattered words.
void i8_prepare(const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* x4, float* sx,
                int64_t m0, int64_t m1) {
  const int64_t K4 = (K + 3) / 4;
  const __m512i by_group = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  alignas(64) int32_t buf[16 * 4];  // [token][group]: 4 quantized inputs per int32
  float inv[16];
  for (int64_t mb = m0; mb < m1; mb += 16) {
    for (int t = 0; t < 16; ++t) {
      const int64_t m = mb + t;
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
      inv[t] = amax > 0.0f ? 127.0f / amax : 0.0f;
    }
    uint8_t* tile = x4 + ((mb / kTok) * K4 * kTok + mb % kTok) * 4;
    for (int64_t k = 0; k < 4 * K4; k += 16) {
      const int64_t kn = (K - k) < 16 ? (K - k) : 16;
      const __mmask16 km = kn >= 16 ? (__mmask16)0xFFFF
                                    : (kn <= 0 ? (__mmask16)0 : (__mmask16)((1u << kn) - 1u));
      for (int t = 0; t < 16; ++t) {
        const __m512 xv = mb + t < M ? _mm512_maskz_loadu_ps(km, x + (mb + t) * ldx + k)
                                     : _mm512_setzero_ps();
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(xv, _mm512_set1_ps(inv[t])));
        q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
        q = _mm512_add_epi32(q, _mm512_set1_epi32(128));
        _mm_store_si128(reinterpret_cast<__m128i*>(buf + 4 * t), _mm512_cvtepi32_epi8(q));
      }
      // [token][group] -> [group][token]: within each 128-bit lane, then across lanes
      __m512i z[4];
      for (int i = 0; i < 4; ++i)
        z[i] = _mm512_permutexvar_epi32(by_group, _mm512_load_si512(buf + 16 * i));
      const __m512i t0 = _mm512_shuffle_i32x4(z[0], z[1], 0x44), t1 = _mm512_shuffle_i32x4(z[0], z[1], 0xEE);
      const __m512i t2 = _mm512_shuffle_i32x4(z[2], z[3], 0x44), t3 = _mm512_shuffle_i32x4(z[2], z[3], 0xEE);
      const __m512i g[4] = {_mm512_shuffle_i32x4(t0, t2, 0x88), _mm512_shuffle_i32x4(t0, t2, 0xDD),
                            _mm512_shuffle_i32x4(t1, t3, 0x88), _mm512_shuffle_i32x4(t1, t3, 0xDD)};
      const int64_t ng = (K4 - k / 4) < 4 ? (K4 - k / 4) : 4;
      for (int64_t i = 0; i < ng; ++i)
        _mm512_store_si512(tile + (k / 4 + i) * kTok * 4, g[i]);
    }
  }
}

// Row r's blocks j in [j, j1) added into a[U] (the activations of 16 U tokens).
template <int U>
inline void i8_row(const uint8_t* tile, const SpI8& w, int32_t j, int32_t j1, __m512i* a) {
  for (; j < j1; ++j) {
    const uint8_t* xp = tile + (int64_t)(w.col[j] >> 2) * kTok * 4;
    const __m512i wb = _mm512_set1_epi32(w.wq[j]);
    for (int u = 0; u < U; ++u)
      a[u] = _mm512_dpbusd_epi32(a[u], _mm512_loadu_si512(xp + 64 * u), wb);
  }
}

template <int U>
void i8_tile(const uint8_t* tile, const SpI8& w, int64_t n0, int32_t* buf) {
  for (int r = 0; r < 16; ++r) {
    __m512i a[U];
    for (int u = 0; u < U; ++u) a[u] = _mm512_setzero_si512();
    i8_row<U>(tile, w, w.row_ptr[n0 + r], w.row_ptr[n0 + r + 1], a);
    for (int u = 0; u < U; ++u) _mm512_store_si512(buf + r * kTok + 16 * u, a[u]);
  }
}

// Rows r and r + 1 side by side over their common length, then each one's rest: one loop
// (its counter, compare and branch) per two blocks and two independent address streams in
// flight. Measured 2-11% faster than one row at a time for K = 768 (benchmarks/int8_kernels.py);
// more rows at once (4) or two accumulator sets within one row did not pay.
template <int U>
void i8_tile_pairs(const uint8_t* tile, const SpI8& w, int64_t n0, int32_t* buf) {
  for (int r = 0; r < 16; r += 2) {
    __m512i a[U], b[U];
    for (int u = 0; u < U; ++u) a[u] = b[u] = _mm512_setzero_si512();
    int32_t ja = w.row_ptr[n0 + r], jb = w.row_ptr[n0 + r + 1];
    const int32_t ea = jb, eb = w.row_ptr[n0 + r + 2];
    for (const int32_t stop = ja + std::min(ea - ja, eb - jb); ja < stop; ++ja, ++jb) {
      const uint8_t* xa = tile + (int64_t)(w.col[ja] >> 2) * kTok * 4;
      const uint8_t* xb = tile + (int64_t)(w.col[jb] >> 2) * kTok * 4;
      const __m512i wa = _mm512_set1_epi32(w.wq[ja]), wb = _mm512_set1_epi32(w.wq[jb]);
      for (int u = 0; u < U; ++u) {
        a[u] = _mm512_dpbusd_epi32(a[u], _mm512_loadu_si512(xa + 64 * u), wa);
        b[u] = _mm512_dpbusd_epi32(b[u], _mm512_loadu_si512(xb + 64 * u), wb);
      }
    }
    i8_row<U>(tile, w, ja, ea, a);
    i8_row<U>(tile, w, jb, eb, b);
    for (int u = 0; u < U; ++u) {
      _mm512_store_si512(buf + r * kTok + 16 * u, a[u]);
      _mm512_store_si512(buf + (r + 1) * kTok + 16 * u, b[u]);
    }
  }
}

void i8_spmm(const uint8_t* x4, int64_t K4, const float* sx, const SpI8& w, const Out& o,
             int64_t n_groups, int64_t i0, int64_t i1) {
  alignas(64) int32_t buf[16 * kTok];
  for (int64_t it = i0; it < i1; ++it) {
    const Item t = item_at<kTok, 16>(it, n_groups, o.M);
    const uint8_t* tile = x4 + t.tile * K4 * kTok * 4;
    with_u(t.U, [&](auto u) {
      if (w.pair_rows)
        i8_tile_pairs<decltype(u)::value>(tile, w, t.n0, buf);
      else
        i8_tile<decltype(u)::value>(tile, w, t.n0, buf);
    });
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

// --- attention primitives (attention.h) ---------------------------------------------------

inline __mmask16 first_n(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

float att_absmax(const float* x, int64_t n) {
  __m512 mx = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16)
    mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_loadu_ps(first_n(n - i), x + i)));
  return _mm512_reduce_max_ps(mx);
}

void att_quant(const float* x, int64_t n, float inv, const float* inv_col, int8_t* dst) {
  const __m512 iv = _mm512_set1_ps(inv);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 km = first_n(n - i);
    const __m512 sc = inv_col ? _mm512_maskz_loadu_ps(km, inv_col + i) : iv;
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(km, x + i), sc));
    q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
    _mm_mask_storeu_epi8(dst + i, km, _mm512_cvtepi32_epi8(q));
  }
}

// s[r][j0 .. j0 + 16 NB) for NQ queries; vpdpbusd takes q as unsigned (q + 128, by flipping
// the sign bit), so 128 * sum_d k[j][d] comes off afterwards.
template <int NQ, int NB>
inline void qk_block(const int8_t* q, int64_t Dp, const int8_t* k4, const int32_t* ksum,
                     int64_t Lp, int64_t j0, int32_t* s) {
  __m512i acc[NQ][NB];
  for (int r = 0; r < NQ; ++r)
    for (int bb = 0; bb < NB; ++bb) acc[r][bb] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi32((int32_t)0x80808080u);
  for (int64_t g = 0; g < Dp / 4; ++g) {
    __m512i kv[NB];
    for (int bb = 0; bb < NB; ++bb) kv[bb] = _mm512_loadu_si512(k4 + (g * Lp + j0 + 16 * bb) * 4);
    for (int r = 0; r < NQ; ++r) {
      const __m512i qb = _mm512_xor_si512(_mm512_set1_epi32(load4(q + r * Dp + 4 * g)), flip);
      for (int bb = 0; bb < NB; ++bb) acc[r][bb] = _mm512_dpbusd_epi32(acc[r][bb], qb, kv[bb]);
    }
  }
  for (int bb = 0; bb < NB; ++bb) {
    const __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(ksum + j0 + 16 * bb), 7);
    for (int r = 0; r < NQ; ++r)
      _mm512_storeu_si512(s + r * Lp + j0 + 16 * bb, _mm512_sub_epi32(acc[r][bb], corr));
  }
}

template <int NQ>
void att_qk(const int8_t* q, int64_t Dp, const int8_t* k4, const int32_t* ksum, int64_t Lp,
            int32_t* s) {
  int64_t j0 = 0;
  for (; j0 + 64 <= Lp; j0 += 64) qk_block<NQ, 4>(q, Dp, k4, ksum, Lp, j0, s);
  if (j0 + 32 <= Lp) qk_block<NQ, 2>(q, Dp, k4, ksum, Lp, j0, s), j0 += 32;
  if (j0 < Lp) qk_block<NQ, 1>(q, Dp, k4, ksum, Lp, j0, s);
}

int32_t att_softmax(float* f, int64_t Lp, uint8_t* p) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < Lp; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(f + j));
  const float m = _mm512_reduce_max_ps(mx);
  if (m == -INFINITY) {
    std::memset(p, 0, Lp);
    return 0;
  }
  const __m512 mv = _mm512_set1_ps(m), k255 = _mm512_set1_ps(255.0f);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t j = 0; j < Lp; j += 16) {
    const __m512i q = _mm512_cvtps_epi32(
        _mm512_mul_ps(exp_neg(_mm512_sub_ps(_mm512_loadu_ps(f + j), mv)), k255));
    sum = _mm512_add_epi32(sum, q);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + j), _mm512_cvtepi32_epi8(q));
  }
  return _mm512_reduce_add_epi32(sum);
}

// o[r][d0 .. d0 + 16 NB): probabilities (uint8) times values (int8), 4 keys per vpdpbusd
template <int NQ, int NB>
inline void pv_block(const uint8_t* p, int64_t Lp, const int8_t* v4, int64_t Dp, int64_t d0,
                     int32_t* o) {
  __m512i acc[NQ][NB];
  for (int r = 0; r < NQ; ++r)
    for (int bb = 0; bb < NB; ++bb) acc[r][bb] = _mm512_setzero_si512();
  for (int64_t jg = 0; jg < Lp / 4; ++jg) {
    __m512i vv[NB];
    for (int bb = 0; bb < NB; ++bb) vv[bb] = _mm512_loadu_si512(v4 + (jg * Dp + d0 + 16 * bb) * 4);
    for (int r = 0; r < NQ; ++r) {
      const __m512i pb = _mm512_set1_epi32(load4(p + r * Lp + 4 * jg));
      for (int bb = 0; bb < NB; ++bb) acc[r][bb] = _mm512_dpbusd_epi32(acc[r][bb], pb, vv[bb]);
    }
  }
  for (int r = 0; r < NQ; ++r)
    for (int bb = 0; bb < NB; ++bb) _mm512_storeu_si512(o + r * Dp + d0 + 16 * bb, acc[r][bb]);
}

template <int NQ>
void att_pv(const uint8_t* p, int64_t Lp, const int8_t* v4, int64_t Dp, int32_t* o) {
  int64_t d0 = 0;
  for (; d0 + 64 <= Dp; d0 += 64) pv_block<NQ, 4>(p, Lp, v4, Dp, d0, o);
  if (d0 + 32 <= Dp) pv_block<NQ, 2>(p, Lp, v4, Dp, d0, o), d0 += 32;
  if (d0 < Dp) pv_block<NQ, 1>(p, Lp, v4, Dp, d0, o);
}

#include "attention.h"

const Isa kAvx512 = {"avx512", kTok, f32_prepare, f32_spmm, i8_prepare, i8_spmm, i8_attention};

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
