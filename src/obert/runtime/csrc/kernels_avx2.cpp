// AVX2 + FMA kernels, for x86 CPUs without AVX-512. Int8 uses the sign trick with
// vpmaddubsw (|x| as unsigned, the weight given x's sign): with both sides in [-127, 127] the
// 16-bit pair sums cannot saturate, so the result equals the exact integer dot product.
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace obert {
namespace {

#include "tiling.h"
#include "att_x86.h"

constexpr int kTok = 32;  // tokens per work item: 4 vectors of 8

inline void tr8(__m256 r[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    s[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
  }
}

inline __m256 exp_neg(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 gelu(__m256 x) {
  const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
  const __m256 sign = _mm256_and_ps(z, _mm256_castsi256_ps(_mm256_set1_epi32(0x80000000)));
  const __m256 a = _mm256_xor_ps(z, sign);
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                                 _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  const __m256 e = exp_neg(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), a), a));
  const __m256 erf = _mm256_or_ps(_mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f)), sign);
  return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), _mm256_add_ps(erf, _mm256_set1_ps(1.0f)));
}

inline __m256i lane_mask(int64_t valid) {  // first `valid` of 8 lanes on
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(valid > 8 ? 8 : valid)), idx);
}

// buf[16 rows][kTok tokens] -> y[m][n0..n0+15]; fin(v, m, half) finishes one token's 8 rows.
template <typename Fin>
inline void store_tile(const float* buf, int U, int64_t m0, int64_t n0, const Out& o, Fin fin) {
  __m256 r[8];
  for (int h = 0; h < 2; ++h) {
    const int64_t nh = n0 + 8 * h;
    if (nh >= o.N) return;
    const __m256i mk = lane_mask(o.N - nh);
    const __m256 bias = o.bias ? _mm256_maskload_ps(o.bias + nh, mk) : _mm256_setzero_ps();
    for (int u = 0; u < U; ++u) {
      for (int i = 0; i < 8; ++i) r[i] = _mm256_load_ps(buf + (8 * h + i) * kTok + 8 * u);
      tr8(r);
      for (int t = 0; t < 8; ++t) {
        const int64_t m = m0 + 8 * u + t;
        if (m >= o.M) break;
        __m256 v = _mm256_add_ps(fin(r[t], m, h), bias);
        if (o.act == 1) v = gelu(v);
        if (o.res) v = _mm256_add_ps(v, _mm256_maskload_ps(o.res + m * o.ldr + nh, mk));
        _mm256_maskstore_ps(o.y + m * o.ldy + nh, mk, v);
      }
    }
  }
}

void f32_prepare(const float* x, int64_t M, int64_t K, int64_t ldx, float* xt, int64_t Kp,
                 int64_t k0, int64_t k1) {
  __m256 r[8];
  const int64_t tiles = (M + kTok - 1) / kTok;
  for (int64_t kk = k0; kk < k1; kk += 8) {
    const int64_t kn = (k1 - kk) < 8 ? (k1 - kk) : 8;
    const __m256i km = lane_mask(kn);
    for (int64_t mm = 0; mm < tiles * kTok; mm += 8) {
      for (int i = 0; i < 8; ++i)
        r[i] = (mm + i < M) ? _mm256_maskload_ps(x + (mm + i) * ldx + kk, km) : _mm256_setzero_ps();
      tr8(r);
      float* dst = xt + ((mm / kTok) * Kp + kk) * kTok + mm % kTok;
      for (int64_t i = 0; i < kn; ++i) _mm256_store_ps(dst + i * kTok, r[i]);
    }
  }
}

template <int U, int BS>
void f32_tile(const float* tile, const SpF32& w, int64_t n0, float* buf) {
  for (int r = 0; r < 16; ++r) {
    __m256 a[U];
    for (int u = 0; u < U; ++u) a[u] = _mm256_setzero_ps();
    const int32_t j1 = w.row_ptr[n0 + r + 1];
    for (int32_t j = w.row_ptr[n0 + r]; j < j1; ++j) {
      const float* xp = tile + (int64_t)w.col[j] * kTok;
      const float* v = w.val + (int64_t)j * BS;
      for (int b = 0; b < BS; ++b) {
        const __m256 vb = _mm256_broadcast_ss(v + b);
        for (int u = 0; u < U; ++u)
          a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(xp + b * kTok + 8 * u), vb, a[u]);
      }
    }
    for (int u = 0; u < U; ++u) _mm256_store_ps(buf + r * kTok + 8 * u, a[u]);
  }
}

void f32_spmm(const float* xt, int64_t Kp, const SpF32& w, const Out& o, int64_t n_groups,
              int64_t i0, int64_t i1) {
  alignas(32) float buf[16 * kTok];
  for (int64_t it = i0; it < i1; ++it) {
    const Item t = item_at<kTok, 8>(it, n_groups, o.M);
    const float* tile = xt + t.tile * Kp * kTok;
    with_u(t.U, [&](auto u) {
      if (w.bs == 4)
        f32_tile<decltype(u)::value, 4>(tile, w, t.n0, buf);
      else
        f32_tile<decltype(u)::value, 1>(tile, w, t.n0, buf);
    });
    store_tile(buf, t.U, t.m0, t.n0, o, [](__m256 v, int64_t, int) { return v; });
  }
}

void i8_prepare(const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* x4, float* sx,
                int64_t m0, int64_t m1) {
  const int64_t K4 = (K + 3) / 4;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t m = m0; m < m1; ++m) {
    float amax = 0.0f;
    if (m < M) {
      __m256 mx = _mm256_setzero_ps();
      for (int64_t k = 0; k < K; k += 8)
        mx = _mm256_max_ps(mx, _mm256_and_ps(absmask, _mm256_maskload_ps(x + m * ldx + k, lane_mask(K - k))));
      alignas(32) float l[8];
      _mm256_store_ps(l, mx);
      for (int i = 0; i < 8; ++i) amax = l[i] > amax ? l[i] : amax;
    }
    sx[m] = amax / 127.0f;
    const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    for (int64_t k = 0; k < 4 * K4; k += 8) {
      const __m256 xv = m < M ? _mm256_maskload_ps(x + m * ldx + k, lane_mask(K - k)) : _mm256_setzero_ps();
      __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(xv, inv));
      q = _mm256_min_epi32(_mm256_max_epi32(q, _mm256_set1_epi32(-127)), _mm256_set1_epi32(127));
      q = _mm256_add_epi32(q, _mm256_set1_epi32(128));
      alignas(32) int32_t g[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(g), q);
      for (int i = 0; i < 2 && k / 4 + i < K4; ++i) {
        const uint32_t packed = (uint32_t)g[4 * i] | ((uint32_t)g[4 * i + 1] << 8) |
                                ((uint32_t)g[4 * i + 2] << 16) | ((uint32_t)g[4 * i + 3] << 24);
        *reinterpret_cast<uint32_t*>(x4 + (((m / kTok) * K4 + k / 4 + i) * kTok + m % kTok) * 4) = packed;
      }
    }
  }
}

template <int U>
void i8_tile(const uint8_t* tile, const SpI8& w, int64_t n0, int32_t* buf) {
  const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
  for (int r = 0; r < 16; ++r) {
    __m256i a[U];
    for (int u = 0; u < U; ++u) a[u] = _mm256_setzero_si256();
    const int32_t j1 = w.row_ptr[n0 + r + 1];
    for (int32_t j = w.row_ptr[n0 + r]; j < j1; ++j) {
      const uint8_t* xp = tile + (int64_t)(w.col[j] >> 2) * kTok * 4;
      const __m256i wb = _mm256_set1_epi32(w.wq[j]);
      for (int u = 0; u < U; ++u) {
        const __m256i xs = _mm256_xor_si256(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 32 * u)), flip);
        const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(xs), _mm256_sign_epi8(wb, xs));
        a[u] = _mm256_add_epi32(a[u], _mm256_madd_epi16(p, ones));
      }
    }
    for (int u = 0; u < U; ++u)
      _mm256_store_si256(reinterpret_cast<__m256i*>(buf + r * kTok + 8 * u), a[u]);
  }
}

void i8_spmm(const uint8_t* x4, int64_t K4, const float* sx, const SpI8& w, const Out& o,
             int64_t n_groups, int64_t i0, int64_t i1) {
  alignas(32) int32_t buf[16 * kTok];
  for (int64_t it = i0; it < i1; ++it) {
    const Item t = item_at<kTok, 8>(it, n_groups, o.M);
    const uint8_t* tile = x4 + t.tile * K4 * kTok * 4;
    with_u(t.U, [&](auto u) { i8_tile<decltype(u)::value>(tile, w, t.n0, buf); });
    __m256 sw[2];
    for (int h = 0; h < 2; ++h)
      sw[h] = t.n0 + 8 * h < o.N
                  ? _mm256_maskload_ps(w.sw + t.n0 + 8 * h, lane_mask(o.N - t.n0 - 8 * h))
                  : _mm256_setzero_ps();
    const float* acc = reinterpret_cast<const float*>(buf);
    store_tile(acc, t.U, t.m0, t.n0, o, [&](__m256 v, int64_t m, int h) {
      return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_castps_si256(v)),
                           _mm256_mul_ps(sw[h], _mm256_set1_ps(sx[m])));
    });
  }
}

// --- attention primitives (attention.h) ---------------------------------------------------

float att_absmax(const float* x, int64_t n) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 mx = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8)
    mx = _mm256_max_ps(mx, _mm256_and_ps(absmask, _mm256_maskload_ps(x + i, lane_mask(n - i))));
  alignas(32) float l[8];
  _mm256_store_ps(l, mx);
  float m = 0.0f;
  for (int i = 0; i < 8; ++i) m = l[i] > m ? l[i] : m;
  return m;
}

void att_quant(const float* x, int64_t n, float inv, const float* inv_col, int8_t* dst) {
  const __m256 iv = _mm256_set1_ps(inv);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i km = lane_mask(n - i);
    const __m256 sc = inv_col ? _mm256_maskload_ps(inv_col + i, km) : iv;
    __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_maskload_ps(x + i, km), sc));
    q = _mm256_min_epi32(_mm256_max_epi32(q, _mm256_set1_epi32(-127)), _mm256_set1_epi32(127));
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    alignas(16) int8_t b[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(b), _mm_packs_epi16(w, w));
    std::memcpy(dst + i, b, n - i < 8 ? n - i : 8);
  }
}

// s[r][j0 .. j0 + 8 NB): the sign trick as in i8_tile (both sides in [-127, 127], exact)
template <int NQ, int NB>
inline void qk_block(const int8_t* q, int64_t Dp, const int8_t* k4, int64_t Lp, int64_t j0,
                     int32_t* s) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[NQ][NB];
  for (int r = 0; r < NQ; ++r)
    for (int bb = 0; bb < NB; ++bb) acc[r][bb] = _mm256_setzero_si256();
  for (int64_t g = 0; g < Dp / 4; ++g) {
    __m256i ka[NB], kv[NB];
    for (int bb = 0; bb < NB; ++bb) {
      kv[bb] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k4 + (g * Lp + j0 + 8 * bb) * 4));
      ka[bb] = _mm256_abs_epi8(kv[bb]);
    }
    for (int r = 0; r < NQ; ++r) {
      const __m256i qb = _mm256_set1_epi32(load4(q + r * Dp + 4 * g));
      for (int bb = 0; bb < NB; ++bb)
        acc[r][bb] = _mm256_add_epi32(
            acc[r][bb], _mm256_madd_epi16(_mm256_maddubs_epi16(ka[bb], _mm256_sign_epi8(qb, kv[bb])), ones));
    }
  }
  for (int r = 0; r < NQ; ++r)
    for (int bb = 0; bb < NB; ++bb)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(s + r * Lp + j0 + 8 * bb), acc[r][bb]);
}

template <int NQ>
void att_qk(const int8_t* q, int64_t Dp, const int8_t* k4, const int32_t*, int64_t Lp, int32_t* s) {
  int64_t j0 = 0;
  for (; j0 + 32 <= Lp; j0 += 32) qk_block<NQ, 4>(q, Dp, k4, Lp, j0, s);
  if (j0 < Lp) qk_block<NQ, 2>(q, Dp, k4, Lp, j0, s);  // Lp is a multiple of 16
}

int32_t att_softmax(float* f, int64_t Lp, uint8_t* p) {
  __m256 mx = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < Lp; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(f + j));
  alignas(32) float l[8];
  _mm256_store_ps(l, mx);
  float m = -INFINITY;
  for (int i = 0; i < 8; ++i) m = l[i] > m ? l[i] : m;
  if (m == -INFINITY) {
    std::memset(p, 0, Lp);
    return 0;
  }
  const __m256 mv = _mm256_set1_ps(m), k255 = _mm256_set1_ps(255.0f);
  __m256i sum = _mm256_setzero_si256();
  for (int64_t j = 0; j < Lp; j += 8) {
    const __m256i q = _mm256_cvtps_epi32(
        _mm256_mul_ps(exp_neg(_mm256_sub_ps(_mm256_loadu_ps(f + j), mv)), k255));
    sum = _mm256_add_epi32(sum, q);
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p + j), _mm_packus_epi16(w, w));
  }
  alignas(32) int32_t t[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), sum);
  int32_t total = 0;
  for (int i = 0; i < 8; ++i) total += t[i];
  return total;
}

// o[r][d0 .. d0 + 8 NB): p in [0, 255] would saturate vpmaddubsw's 16-bit pair sums, so it is
// split as p = lo + 128 hi (lo < 128, hi in {0, 1}): both products stay exact.
template <int NQ, int NB>
inline void pv_block(const uint8_t* p, int64_t Lp, const int8_t* v4, int64_t Dp, int64_t d0,
                     int32_t* o) {
  const __m256i ones = _mm256_set1_epi16(1), low7 = _mm256_set1_epi8(0x7F),
                bit0 = _mm256_set1_epi8(1);
  __m256i acc[NQ][NB];
  for (int r = 0; r < NQ; ++r)
    for (int bb = 0; bb < NB; ++bb) acc[r][bb] = _mm256_setzero_si256();
  for (int64_t jg = 0; jg < Lp / 4; ++jg) {
    __m256i vv[NB];
    for (int bb = 0; bb < NB; ++bb)
      vv[bb] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v4 + (jg * Dp + d0 + 8 * bb) * 4));
    for (int r = 0; r < NQ; ++r) {
      const __m256i pb = _mm256_set1_epi32(load4(p + r * Lp + 4 * jg));
      const __m256i lo = _mm256_and_si256(pb, low7);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(pb, 7), bit0);
      for (int bb = 0; bb < NB; ++bb) {
        const __m256i a = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, vv[bb]), ones);
        const __m256i b = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, vv[bb]), ones);
        acc[r][bb] = _mm256_add_epi32(acc[r][bb], _mm256_add_epi32(a, _mm256_slli_epi32(b, 7)));
      }
    }
  }
  for (int r = 0; r < NQ; ++r)
    for (int bb = 0; bb < NB; ++bb)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + r * Dp + d0 + 8 * bb), acc[r][bb]);
}

template <int NQ>
void att_pv(const uint8_t* p, int64_t Lp, const int8_t* v4, int64_t Dp, int32_t* o) {
  int64_t d0 = 0;
  for (; d0 + 32 <= Dp; d0 += 32) pv_block<NQ, 4>(p, Lp, v4, Dp, d0, o);
  if (d0 < Dp) pv_block<NQ, 2>(p, Lp, v4, Dp, d0, o);  // Dp is a multiple of 16
}

#include "attention.h"

const Isa kAvx2 = {"avx2", kTok, f32_prepare, f32_spmm, i8_prepare, i8_spmm, i8_attention};

}  // namespace
}  // namespace obert

#pragma GCC pop_options

namespace obert {
const Isa* isa_avx2() { return &kAvx2; }
}  // namespace obert

#else
namespace obert {
const Isa* isa_avx2() { return nullptr; }
}  // namespace obert
#endif
