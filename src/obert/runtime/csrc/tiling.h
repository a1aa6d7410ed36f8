// How a work item maps to tokens and output rows, shared by the vector kernels (the scalar
// file takes only with_u, for the attention driver). Included inside
// each ISA file's anonymous namespace and target pragma, so every file gets its own copy
// compiled for its own instruction set (no inline function is shared across targets).
#pragma once

// Work item `it` = token tile * n_groups + row group (see Isa::f32_spmm).
struct Item {
  int64_t tile;  // token tile index
  int64_t m0;    // first token of the tile
  int64_t n0;    // first output row of the group
  int U;         // vectors of kVec tokens that hold real tokens (1 .. kTok / kVec)
};

template <int kTok, int kVec>
inline Item item_at(int64_t it, int64_t n_groups, int64_t M) {
  Item t;
  t.tile = it / n_groups;
  t.m0 = t.tile * kTok;
  t.n0 = (it % n_groups) * kRowGroup;
  const int64_t left = (M - t.m0 + kVec - 1) / kVec;
  t.U = left < kTok / kVec ? (int)left : kTok / kVec;
  return t;
}

// Calls f(Const<U>{}) so that the tile kernels get U as a compile-time constant.
template <int U>
struct Const {
  static constexpr int value = U;
};

template <typename F>
inline void with_u(int U, F&& f) {
  switch (U) {
    case 1: f(Const<1>{}); break;
    case 2: f(Const<2>{}); break;
    case 3: f(Const<3>{}); break;
    default: f(Const<4>{}); break;
  }
}
