// INT8 self-attention for one range of (batch, head) pairs, the same for every instruction set
// (see Attn in kernels.h for the equations). Included inside each ISA file's anonymous
// namespace, after tiling.h, once that file has defined its primitives:
//   float att_absmax(x, n)                     max |x[0..n)|
//   void att_quant(x, n, inv, inv_col, dst)    dst[i] = clamp(round(x[i] * (inv_col ? inv_col[i] : inv)), +-127)
//   void att_qk<NQ>(q, Dp, k4, ksum, Lp, s)    s[r][j] = sum_d q[r][d] k[j][d], r < NQ, j < Lp
//   int32_t att_softmax(f, Lp, p)              p[j] = round(255 exp(f[j] - max f)), returns sum p
//   void att_pv<NQ>(p, Lp, v4, Dp, o)          o[r][d] = sum_j p[r][j] v[j][d]
//   void att_interleave4(rows, Dp, dst)        dst[d][r] = rows[r][d], r < 4, d < Dp
// Layouts: q [L][Dp] int8; k4 [Dp/4][Lp][4] (4 consecutive d of a key together); v4
// [Lp/4][Dp][4] (4 consecutive keys of a column together); Dp, Lp: D, L rounded up to 16,
// zero-padded. Each work range keeps its own buffers: no state is shared between threads.
// (The standard headers it needs come from kernels.h, outside any namespace.)
#pragma once

template <typename T>
struct AttBuf {  // a 64-byte aligned, zero-filled scratch array
  std::vector<uint8_t> raw;
  T* p = nullptr;
  explicit AttBuf(int64_t n) : raw(n * sizeof(T) + 64, 0) {
    p = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(raw.data()) + 63) & ~uintptr_t(63));
  }
};

// An additive mask at or below this gives a key exactly zero probability (exp underflows), in
// fp32 attention and here alike: transformers' eager masks use the float32 minimum.
constexpr float kNeverAttended = -1e30f;

void i8_attention(const Attn& a, int64_t bh0, int64_t bh1) {
  const int64_t L = a.L, D = a.D, Dp = (D + 15) / 16 * 16, Lp = (L + 15) / 16 * 16;
  AttBuf<int8_t> qq(L * Dp), k4(Dp * Lp), v4(Lp * Dp), row(Dp), rows4(4 * Dp);
  AttBuf<float> sq(L), sk(Lp), sv(Dp), inv_v(Dp), colmax(Dp), f(Lp);
  AttBuf<int32_t> ksum(Lp), s(4 * Lp), o(4 * Dp);
  AttBuf<uint8_t> p(4 * Lp), used(L);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    const float* qb = a.q + b * L * a.ldq + h * D;
    const float* kb = a.k + b * L * a.ldk + h * D;
    const float* vb = a.v + b * L * a.ldv + h * D;
    // q and k: per row; rows past L and columns past D stay zero
    for (int64_t i = 0; i < L; ++i) {
      const float amax = att_absmax(qb + i * a.ldq, D);
      sq.p[i] = amax / 127.0f;
      att_quant(qb + i * a.ldq, D, amax > 0.0f ? 127.0f / amax : 0.0f, nullptr, qq.p + i * Dp);
    }
    for (int64_t j = 0; j < L; ++j) {
      const float amax = att_absmax(kb + j * a.ldk, D);
      sk.p[j] = amax / 127.0f;
      att_quant(kb + j * a.ldk, D, amax > 0.0f ? 127.0f / amax : 0.0f, nullptr, row.p);
      int32_t sum = 0;
      for (int64_t d = 0; d < D; ++d) sum += row.p[d];
      ksum.p[j] = sum;
      for (int64_t g = 0; g < Dp / 4; ++g)
        std::memcpy(k4.p + (g * Lp + j) * 4, row.p + 4 * g, 4);
    }
    // v: per column over the keys some query can attend (a padding key's value must not set
    // the scale, or a sequence's outputs would depend on how much padding its batch has)
    if (a.fmask || a.bmask) {
      std::memset(used.p, 0, L);
      for (int64_t i = 0; i < L; ++i) {
        const int64_t off = b * a.mb + h * a.mh + i * a.mq;
        if (a.bmask)
          for (int64_t j = 0; j < L; ++j) used.p[j] |= a.bmask[off + j] != 0;
        else
          for (int64_t j = 0; j < L; ++j) used.p[j] |= a.fmask[off + j] > kNeverAttended;
      }
    } else {
      std::memset(used.p, 1, L);
    }
    for (int64_t d = 0; d < D; ++d) colmax.p[d] = 0.0f;
    for (int64_t j = 0; j < L; ++j) {
      if (!used.p[j]) continue;
      const float* vr = vb + j * a.ldv;
      for (int64_t d = 0; d < D; ++d) {
        const float x = std::fabs(vr[d]);
        colmax.p[d] = x > colmax.p[d] ? x : colmax.p[d];
      }
    }
    for (int64_t d = 0; d < D; ++d) {
      sv.p[d] = colmax.p[d] / 127.0f;
      inv_v.p[d] = colmax.p[d] > 0.0f ? 127.0f / colmax.p[d] : 0.0f;
    }
    for (int64_t j0 = 0; j0 < L; j0 += 4) {  // 4 keys at a time, interleaved per column
      for (int64_t r = 0; r < 4; ++r) {
        if (j0 + r < L)
          att_quant(vb + (j0 + r) * a.ldv, D, 0.0f, inv_v.p, rows4.p + r * Dp);
        else
          std::memset(rows4.p + r * Dp, 0, Dp);
      }
      att_interleave4(rows4.p, Dp, v4.p + (j0 / 4) * Dp * 4);
    }
    // queries four at a time: scores, softmax to uint8, probabilities times values
    for (int64_t i0 = 0; i0 < L; i0 += 4) {
      const int nq = (int)std::min<int64_t>(4, L - i0);
      with_u(nq, [&](auto c) { att_qk<decltype(c)::value>(qq.p + i0 * Dp, Dp, k4.p, ksum.p, Lp, s.p); });
      int32_t psum[4];
      for (int r = 0; r < nq; ++r) {
        const int64_t i = i0 + r;
        const float c = sq.p[i] * a.scaling;
        const int32_t* sr = s.p + r * Lp;
        for (int64_t j = 0; j < L; ++j) f.p[j] = (float)sr[j] * c * sk.p[j];
        if (a.fmask) {
          const float* m = a.fmask + b * a.mb + h * a.mh + i * a.mq;
          for (int64_t j = 0; j < L; ++j) f.p[j] += m[j];
        } else if (a.bmask) {
          const uint8_t* m = a.bmask + b * a.mb + h * a.mh + i * a.mq;
          for (int64_t j = 0; j < L; ++j) f.p[j] = m[j] ? f.p[j] : ninf;
        }
        for (int64_t j = L; j < Lp; ++j) f.p[j] = ninf;
        psum[r] = att_softmax(f.p, Lp, p.p + r * Lp);
      }
      with_u(nq, [&](auto c) { att_pv<decltype(c)::value>(p.p, Lp, v4.p, Dp, o.p); });
      for (int r = 0; r < nq; ++r) {
        const float inv = psum[r] > 0 ? 1.0f / (float)psum[r] : 0.0f;
        float* y = a.out + (b * L + i0 + r) * a.ldo + h * D;
        const int32_t* orow = o.p + r * Dp;
        for (int64_t d = 0; d < D; ++d) y[d] = (float)orow[d] * sv.p[d] * inv;
      }
    }
  }
}
