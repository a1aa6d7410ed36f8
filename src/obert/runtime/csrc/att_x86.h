// Pieces of the attention primitives that only need SSE2, shared by the AVX2 and AVX-512
// files. Included inside each one's anonymous namespace and target pragma (as tiling.h is),
// so each gets its own copy compiled for its own instruction set.
#pragma once

inline int32_t load4(const void* p) {  // 4 bytes as one int32, without aliasing trouble
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// 4 rows of Dp bytes (Dp a multiple of 16) -> [Dp][4]: the 4 keys of each column together
void att_interleave4(const int8_t* rows, int64_t Dp, int8_t* dst) {
  for (int64_t d = 0; d < Dp; d += 16) {
    const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + d));
    const __m128i r1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + Dp + d));
    const __m128i r2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + 2 * Dp + d));
    const __m128i r3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + 3 * Dp + d));
    const __m128i a = _mm_unpacklo_epi8(r0, r1), b = _mm_unpacklo_epi8(r2, r3);
    const __m128i c = _mm_unpackhi_epi8(r0, r1), e = _mm_unpackhi_epi8(r2, r3);
    __m128i* out = reinterpret_cast<__m128i*>(dst + d * 4);
    _mm_storeu_si128(out, _mm_unpacklo_epi16(a, b));
    _mm_storeu_si128(out + 1, _mm_unpackhi_epi16(a, b));
    _mm_storeu_si128(out + 2, _mm_unpacklo_epi16(c, e));
    _mm_storeu_si128(out + 3, _mm_unpackhi_epi16(c, e));
  }
}
