// Torch bindings: pick the instruction set at run time, lay out the activations, run the
// sparse kernels on PyTorch's own intra-op thread pool (at::parallel_for), so obert never
// starts a second pool that would fight PyTorch's for the same cores.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels.h"

namespace {

using obert::Isa;

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

std::vector<std::string> available() {
  std::vector<std::string> out;
  if (obert::isa_avx512() && cpu_has_avx512()) out.push_back("avx512");
  if (obert::isa_avx2() && cpu_has_avx2()) out.push_back("avx2");
  out.push_back("scalar");
  return out;
}

const Isa* by_name(const std::string& name) {
  if (name == "avx512") return obert::isa_avx512();
  if (name == "avx2") return obert::isa_avx2();
  return obert::isa_scalar();
}

// The instruction set in use: atomic, so set_isa from one thread never tears a pointer that a
// kernel call in another thread is reading (each call loads it once and keeps it).
std::atomic<const Isa*>& current() {
  static std::atomic<const Isa*> isa{by_name(available().front())};
  return isa;
}

void set_isa(const std::string& name) {
  const auto av = available();
  const std::string want = name == "auto" ? av.front() : name;
  for (const auto& a : av)
    if (a == want) {
      current().store(by_name(a));
      return;
    }
  std::string list;
  for (const auto& a : av) list += (list.empty() ? "" : ", ") + a;
  TORCH_CHECK(false, "instruction set '", name, "' is not available on this CPU; choose auto, ",
              list);
}

// How the AVX-512 INT8 kernel walks a row group: "pairs" (two output rows side by side, the
// default) or "rows" (one at a time, the earlier kernel). The sums are the same; the switch
// exists so that benchmarks/int8_kernels.py can time both in one process. OBERT_I8_TILE picks
// the start-up value.
std::atomic<bool>& pair_rows() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("OBERT_I8_TILE");
    return !(e && std::string(e) == "rows");
  }()};
  return on;
}

void set_i8_tile(const std::string& name) {
  TORCH_CHECK(name == "pairs" || name == "rows", "INT8 tile walk must be 'pairs' or 'rows', not '",
              name, "'");
  pair_rows().store(name == "pairs");
}

// Time spent laying out and quantizing activations, for obert.runtime.profile: off unless a
// profile asks (one relaxed load per call when off). Wall time of the prepare steps; inside
// ffn_i8's tiles, each thread's time divided by the threads (they prepare side by side).
std::atomic<bool> g_timing{false};
std::atomic<int64_t> g_prep_ns{0};

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct PrepTimer {  // adds its lifetime (divided by `share`) to g_prep_ns when timing is on
  int64_t t0, share;
  explicit PrepTimer(int64_t share_ = 1) : t0(g_timing.load(std::memory_order_relaxed) ? now_ns() : -1), share(share_) {}
  ~PrepTimer() {
    if (t0 >= 0) g_prep_ns.fetch_add((now_ns() - t0) / share, std::memory_order_relaxed);
  }
};

int64_t prep_timer(bool on) {
  const int64_t spent = g_prep_ns.exchange(0);
  g_timing.store(on);
  return spent;
}

// A scratch buffer per calling thread: the activation layouts are rebuilt on every call.
template <typename T>
T* scratch(size_t n) {
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < n * sizeof(T) + 64) buf.resize(n * sizeof(T) + 64);
  auto p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((p + 63) & ~uintptr_t(63));
}

void check_x(const torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 &&
                  x.stride(1) == 1,
              "obert kernels take a CPU float32 [tokens, features] tensor with unit inner stride");
}

// INT8 sums: each product of a uint8 activation (0..255) and an int8 weight (-127..127) is at
// most 255 * 127 in magnitude, so an int32 accumulator cannot overflow for K up to this.
constexpr int64_t kMaxK8 = 2147483647LL / (255 * 127);
constexpr int64_t kColPad = 16;  // pack.py's COL_PAD: trailing column entries the kernels prefetch

// Every index a kernel will follow, checked before it runs: rows padded to whole groups of 16,
// row_ptr from 0 and non-decreasing, nnz blocks of values, col long enough for the prefetch and
// every block inside the activations (a multiple of 4 for 4-blocks). Returns nnz.
int64_t check_sparse(const torch::Tensor& row_ptr, const torch::Tensor& col, int64_t N, int64_t K,
                     int64_t bs) {
  const int64_t groups = (N + obert::kRowGroup - 1) / obert::kRowGroup;
  TORCH_CHECK(N >= 0 && row_ptr.scalar_type() == torch::kInt32 && row_ptr.is_contiguous() &&
                  row_ptr.dim() == 1 && row_ptr.numel() == groups * obert::kRowGroup + 1,
              "row_ptr must be int32 with ceil(N / 16) * 16 + 1 = ", groups * obert::kRowGroup + 1,
              " entries for N = ", N, ", not ", row_ptr.numel(), " (pack with obert.runtime.pack)");
  const int32_t* r = row_ptr.data_ptr<int32_t>();
  TORCH_CHECK(r[0] == 0, "row_ptr must start at 0, not ", r[0]);
  for (int64_t n = 0; n + 1 < row_ptr.numel(); ++n)
    TORCH_CHECK(r[n + 1] >= r[n], "row_ptr decreases at row ", n, " (", r[n], " then ", r[n + 1],
                ")");
  const int64_t nnz = r[row_ptr.numel() - 1];
  TORCH_CHECK(col.scalar_type() == torch::kInt32 && col.is_contiguous() && col.dim() == 1 &&
                  col.numel() >= nnz + kColPad,
              "col must be int32 with nnz + ", kColPad, " = ", nnz + kColPad,
              " entries, not ", col.numel());
  const int32_t* c = col.data_ptr<int32_t>();
  const int64_t last = bs == 4 ? (K + 3) / 4 * 4 - 4 : K - 1;  // the last valid block start
  int32_t lo = 0, hi = 0, odd = 0;
  for (int64_t j = 0; j < nnz; ++j) {  // one pass, vectorised: min, max and alignment
    lo = std::min(lo, c[j]);
    hi = std::max(hi, c[j]);
    odd |= c[j];
  }
  TORCH_CHECK(nnz == 0 || (lo >= 0 && hi <= last), "col holds a block at column ",
              lo < 0 ? lo : hi, ", outside the ", K, " inputs");
  TORCH_CHECK(bs != 4 || (odd & 3) == 0, "a 4-block column index is not a multiple of 4");
  return nnz;
}

// The kernels' work items (token tile t, row group g) -> item t * groups + g, split into one
// contiguous range per thread holding about the same work: the blocks of its groups plus a
// fixed cost per group (its 16 x T outputs). Global pruning leaves some rows far denser than
// others, so equal item counts would leave threads waiting on the densest range.
constexpr int64_t kGroupCost = 16;  // a group's fixed work, in blocks
constexpr int64_t kChunks = 4;      // work ranges per thread

// body(i0, i1) over [0, n) in pieces of `step`, each piece taken by whichever of the pool's
// threads is free next: on a shared machine one core can stall for a while, and a fixed split
// would wait for it. Pieces are taken in order, so neighbouring work stays together.
template <typename F>
void take_in_turn(int64_t n, int64_t step, const F& body) {
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (n + step - 1) / step));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, P, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(step); i < n; i = next.fetch_add(step)) body(i, std::min(n, i + step));
  });
}

template <typename F>
void parallel_balanced(int64_t tiles, int64_t groups, const int32_t* row_ptr, const F& body) {
  const int64_t items = tiles * groups;
  const int64_t P = std::min<int64_t>(at::get_num_threads(), items);
  if (P <= 1) {
    if (items > 0) body(0, items);
    return;
  }
  const int64_t per_tile = row_ptr[groups * obert::kRowGroup] + groups * kGroupCost;
  const auto before = [&](int64_t i) {  // work of the items before item i
    const int64_t t = i / groups, g = i % groups;
    return t * per_tile + row_ptr[g * obert::kRowGroup] + g * kGroupCost;
  };
  const auto first_at = [&](int64_t target) {  // the first item that starts at or after target
    int64_t lo = 0, hi = items;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (before(mid) < target) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  // kChunks ranges of equal work per thread, taken in turn
  const int64_t total = tiles * per_tile, C = std::min<int64_t>(items, P * kChunks);
  take_in_turn(C, 1, [&](int64_t c, int64_t) {
    const int64_t i0 = first_at(total * c / C), i1 = c + 1 == C ? items : first_at(total * (c + 1) / C);
    if (i0 < i1) body(i0, i1);
  });
}

// The kernels write y in strips of 16 outputs for 64 tokens at once: 64 rows a row stride
// apart. When that stride is a multiple of 2 KiB (N = 512, 1024, 1536, 3072, ...) the rows map
// to a few cache sets and evict each other (FFN outputs took 2x longer than N + 16). Such
// outputs get 16 floats of padding per row: the result is y[:, :N] of a [M, N + 16] tensor,
// a view with unit inner stride, which the next kernel call and torch ops read as it is.
int64_t row_stride(int64_t N) { return N > 0 && (N * 4) % 2048 == 0 ? N + 16 : N; }

torch::Tensor new_output(int64_t M, int64_t N, const torch::Tensor& x) {
  const int64_t ld = row_stride(N);
  return ld == N ? torch::empty({M, N}, x.options())
                 : torch::empty({M, ld}, x.options()).narrow(1, 0, N);
}

// A checked bias for N outputs, or null.
const float* bias_of(const c10::optional<torch::Tensor>& bias, int64_t N) {
  if (!bias || !bias->defined()) return nullptr;
  TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() &&
                  bias->numel() == N,
              "bias must be float32 with one value per output");
  return bias->data_ptr<float>();
}

// A checked residual for [M, N] outputs (added after bias and activation), or null.
const float* residual_of(const c10::optional<torch::Tensor>& res, int64_t M, int64_t N) {
  if (!res || !res->defined()) return nullptr;
  TORCH_CHECK(res->device().is_cpu() && res->scalar_type() == torch::kFloat32 &&
                  res->dim() == 2 && res->size(0) == M && res->size(1) == N &&
                  res->stride(1) == 1,
              "residual must be a CPU float32 [", M, ", ", N, "] tensor with unit inner stride, "
              "not ", res->sizes());
  return res->data_ptr<float>();
}

obert::Out make_out(torch::Tensor& y, const c10::optional<torch::Tensor>& bias, int64_t act,
                    const c10::optional<torch::Tensor>& res = c10::nullopt) {
  return {y.data_ptr<float>(), y.size(0), y.size(1), y.stride(0), bias_of(bias, y.size(1)),
          (int)act, residual_of(res, y.size(0), y.size(1)),
          res && res->defined() ? res->stride(0) : 0};
}

torch::Tensor spmm_f32(const torch::Tensor& x, const torch::Tensor& row_ptr,
                       const torch::Tensor& col, const torch::Tensor& val, int64_t bs, int64_t N,
                       const c10::optional<torch::Tensor>& bias, int64_t act,
                       const c10::optional<torch::Tensor>& residual) {
  check_x(x);
  TORCH_CHECK(bs == 1 || bs == 4, "block size must be 1 or 4");
  const int64_t nnz = check_sparse(row_ptr, col, N, x.size(1), bs);
  TORCH_CHECK(val.scalar_type() == torch::kFloat32 && val.is_contiguous() &&
                  val.numel() == nnz * bs,
              "val must be float32 with nnz * bs = ", nnz * bs, " values, not ", val.numel());
  const Isa* isa = current().load();
  const int64_t M = x.size(0), K = x.size(1), T = isa->tok_tile, tiles = (M + T - 1) / T;
  auto y = new_output(M, N, x);
  if (M == 0) return y;
  // 4-blocks may reach up to 3 columns past K: those rows of each tile are zero.
  const int64_t Kp = (K + 3) / 4 * 4;
  float* xt = scratch<float>(tiles * Kp * T);
  for (int64_t t = 0; t < tiles; ++t) std::fill(xt + (t * Kp + K) * T, xt + (t + 1) * Kp * T, 0.0f);
  const float* xp = x.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  {
    PrepTimer timer;
    at::parallel_for(0, (K + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
      isa->f32_prepare(xp, M, K, ldx, xt, Kp, b0 * 16, std::min(K, b1 * 16));
    });
  }
  const obert::SpF32 w{row_ptr.data_ptr<int32_t>(), col.data_ptr<int32_t>(),
                       val.data_ptr<float>(), (int)bs};
  const obert::Out o = make_out(y, bias, act, residual);
  const int64_t groups = (row_ptr.numel() - 1) / obert::kRowGroup;
  parallel_balanced(tiles, groups, w.row_ptr, [&](int64_t i0, int64_t i1) {
    isa->f32_spmm(xt, Kp, w, o, groups, i0, i1);
  });
  return y;
}

// The checks of one packed INT8 weight over K inputs; its kernel view.
obert::SpI8 check_i8(int64_t K, const torch::Tensor& row_ptr, const torch::Tensor& col,
                     const torch::Tensor& wq, const torch::Tensor& sw, const torch::Tensor& wsum,
                     int64_t N) {
  TORCH_CHECK(K <= kMaxK8, "INT8 kernels take at most ", kMaxK8,
              " inputs (int32 sums could overflow beyond), not ", K);
  const int64_t nnz = check_sparse(row_ptr, col, N, K, 4);
  TORCH_CHECK(wq.scalar_type() == torch::kInt32 && wq.is_contiguous() && wq.numel() == nnz &&
                  sw.scalar_type() == torch::kFloat32 && sw.is_contiguous() &&
                  sw.numel() == N && wsum.scalar_type() == torch::kInt32 &&
                  wsum.is_contiguous() && wsum.numel() == N,
              "int8 weights must be packed by obert.runtime.pack: wq int32 [nnz = ", nnz,
              "], sw float32 [N], wsum int32 [N]");
  return {row_ptr.data_ptr<int32_t>(), col.data_ptr<int32_t>(), wq.data_ptr<int32_t>(),
          sw.data_ptr<float>(), wsum.data_ptr<int32_t>(), pair_rows().load()};
}

// x quantized per token into the INT8 tile layout (kernels.h) for Mt tokens (whole tiles),
// in the calling thread's scratch: the activations x4 and their scales sx.
struct I8Input {
  uint8_t* x4;
  float* sx;
};

I8Input prepare_i8(const Isa* isa, const torch::Tensor& x, int64_t Mt) {
  const int64_t M = x.size(0), K = x.size(1), K4 = (K + 3) / 4, ldx = x.stride(0);
  uint8_t* x4 = scratch<uint8_t>(K4 * Mt * 4 + Mt * sizeof(float) + 64);
  float* sx = reinterpret_cast<float*>(x4 + (K4 * Mt * 4 + 63) / 64 * 64);
  const float* xp = x.data_ptr<float>();
  PrepTimer timer;
  // in whole blocks of 16 tokens (the vector prepares lay out 16 tokens per store)
  at::parallel_for(0, Mt / 16, 1, [&](int64_t b0, int64_t b1) {
    isa->i8_prepare(xp, M, K, ldx, x4, sx, b0 * 16, b1 * 16);
  });
  return {x4, sx};
}

torch::Tensor spmm_i8(const torch::Tensor& x, const torch::Tensor& row_ptr,
                      const torch::Tensor& col, const torch::Tensor& wq, const torch::Tensor& sw,
                      const torch::Tensor& wsum, int64_t N, const c10::optional<torch::Tensor>& bias,
                      int64_t act, const c10::optional<torch::Tensor>& residual) {
  check_x(x);
  const obert::SpI8 w = check_i8(x.size(1), row_ptr, col, wq, sw, wsum, N);
  const Isa* isa = current().load();
  const int64_t M = x.size(0), K4 = (x.size(1) + 3) / 4, T = isa->tok_tile;
  const int64_t Mt = (M + T - 1) / T * T;  // tokens in whole tiles
  auto y = new_output(M, N, x);
  if (M == 0) return y;
  const auto [x4, sx] = prepare_i8(isa, x, Mt);
  const obert::Out o = make_out(y, bias, act, residual);
  const int64_t groups = (row_ptr.numel() - 1) / obert::kRowGroup;
  parallel_balanced(Mt / T, groups, w.row_ptr, [&](int64_t i0, int64_t i1) {
    isa->i8_spmm(x4, K4, sx, w, o, groups, i0, i1);
  });
  return y;
}

// Each worker thread's buffers for ffn_i8's token tiles (not `scratch`: the calling thread
// is also a worker, and its scratch holds the shared input layout meanwhile).
uint8_t* tile_scratch(size_t n) {
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < n + 64) buf.resize(n + 64);
  auto p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<uint8_t*>((p + 63) & ~uintptr_t(63));
}

// The feed-forward block y = GELU(x W1^T + b1) W2^T + b2 (+ x: add_input, the residual the
// layer adds before its LayerNorm), both weights INT8 4-blocks, one
// token tile at a time: the tile's hidden activations (T x N1 floats, ~0.8 MB for BERT-base)
// go from the first kernel's GELU epilogue to the second's int8 layout while still in this
// core's cache, never through memory as a [tokens, N1] tensor. The numbers are exactly those
// of two spmm_i8 calls. With fewer tiles than threads it is those two calls (tiles are the
// unit of work here, and one tile per thread would leave cores idle).
torch::Tensor ffn_i8(const torch::Tensor& x, const torch::Tensor& rp1, const torch::Tensor& col1,
                     const torch::Tensor& wq1, const torch::Tensor& sw1, const torch::Tensor& wsum1,
                     int64_t N1, const c10::optional<torch::Tensor>& b1, const torch::Tensor& rp2,
                     const torch::Tensor& col2, const torch::Tensor& wq2, const torch::Tensor& sw2,
                     const torch::Tensor& wsum2, int64_t N2, const c10::optional<torch::Tensor>& b2,
                     bool add_input) {
  check_x(x);
  const obert::SpI8 w1 = check_i8(x.size(1), rp1, col1, wq1, sw1, wsum1, N1);
  const obert::SpI8 w2 = check_i8(N1, rp2, col2, wq2, sw2, wsum2, N2);
  const Isa* isa = current().load();
  const int64_t M = x.size(0), K4 = (x.size(1) + 3) / 4, T = isa->tok_tile;
  const int64_t tiles = (M + T - 1) / T, Mt = tiles * T;
  const c10::optional<torch::Tensor> res = add_input ? c10::optional<torch::Tensor>(x) : c10::nullopt;
  TORCH_CHECK(!add_input || N2 == x.size(1), "adding the input needs as many outputs (", N2,
              ") as inputs (", x.size(1), ")");
  if (tiles < at::get_num_threads()) {
    const auto h = spmm_i8(x, rp1, col1, wq1, sw1, wsum1, N1, b1, 1, c10::nullopt);
    return spmm_i8(h, rp2, col2, wq2, sw2, wsum2, N2, b2, 0, res);
  }
  auto y = new_output(M, N2, x);
  const auto [x4, sx] = prepare_i8(isa, x, Mt);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles));
  const float* bias1 = bias_of(b1, N1);
  const float* bias2 = bias_of(b2, N2);
  const int64_t ldh = row_stride(N1);  // as new_output would lay it out
  const int64_t K4h = (N1 + 3) / 4;
  const int64_t g1 = (rp1.numel() - 1) / obert::kRowGroup, g2 = (rp2.numel() - 1) / obert::kRowGroup;
  float* yp = y.data_ptr<float>();
  const int64_t ldy = y.stride(0);
  const size_t hb = (size_t)(T * ldh * sizeof(float) + 63) / 64 * 64;
  const size_t qb = (size_t)(K4h * T * 4 + 63) / 64 * 64;
  take_in_turn(tiles, 1, [&](int64_t t, int64_t) {  // one tile at a time
    uint8_t* mem = tile_scratch(hb + qb + T * sizeof(float));
    float* h = reinterpret_cast<float*>(mem);
    uint8_t* h4 = mem + hb;
    float* sh = reinterpret_cast<float*>(mem + hb + qb);
    const int64_t mt = std::min(T, M - t * T);
    const obert::Out o1{h, mt, N1, ldh, bias1, 1};
    isa->i8_spmm(x4 + t * K4 * T * 4, K4, sx + t * T, w1, o1, g1, 0, g1);
    {
      PrepTimer timer(threads);
      isa->i8_prepare(h, mt, N1, ldh, h4, sh, 0, T);
    }
    const float* rt = add_input ? x.data_ptr<float>() + t * T * x.stride(0) : nullptr;
    const obert::Out o2{yp + t * T * ldy, mt, N2, ldy, bias2, 0, rt, x.stride(0)};
    isa->i8_spmm(h4, K4h, sh, w2, o2, g2, 0, g2);
  });
  return y;
}

// INT8 self-attention (kernels.h: Attn) on the projections' outputs as they are: q, k and v
// are [batch * L, heads * D] views with unit inner stride (e.g. slices of one fused
// query/key/value output), the result a new [batch * L, heads * D] tensor. The mask is what
// transformers passes to attention: [batch or 1, heads or 1, L, L], bool (True: attend) or
// float (added to the scores); None for none.
torch::Tensor attention_i8(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           int64_t batch, int64_t heads, const c10::optional<torch::Tensor>& mask,
                           double scaling) {
  for (const auto* t : {&q, &k, &v})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == torch::kFloat32 && t->dim() == 2 &&
                    t->stride(1) == 1 && t->stride(0) >= t->size(1),
                "attention takes CPU float32 [batch * length, heads * head_dim] query, key and "
                "value with unit inner stride");
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "query, key and value must have one shape, not ", q.sizes(), ", ", k.sizes(), ", ",
              v.sizes());
  TORCH_CHECK(batch > 0 && heads > 0 && q.size(0) % batch == 0 && q.size(1) % heads == 0,
              "rows (", q.size(0), ") must split into ", batch, " sequences and columns (",
              q.size(1), ") into ", heads, " heads");
  const int64_t L = q.size(0) / batch, D = q.size(1) / heads;
  TORCH_CHECK(D <= kMaxK8, "head size ", D, " is too large for int32 sums");
  TORCH_CHECK(L <= 8388607, "sequence length ", L, " is too large for int32 sums");
  obert::Attn a{q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                q.stride(0), k.stride(0), v.stride(0), batch, L, heads, D,
                nullptr, nullptr, 0, 0, 0, (float)scaling, nullptr, 0};
  torch::Tensor m;
  if (mask && mask->defined()) {
    m = *mask;
    TORCH_CHECK(m.device().is_cpu() && m.dim() == 4 && (m.size(0) == batch || m.size(0) == 1) &&
                    (m.size(1) == heads || m.size(1) == 1) && m.size(2) == L && m.size(3) == L,
                "attention mask must be [batch or 1, heads or 1, ", L, ", ", L, "], not ",
                m.sizes());
    TORCH_CHECK(m.scalar_type() == torch::kBool || m.scalar_type() == torch::kFloat32,
                "attention mask must be bool (True: attend) or float32 (added to the scores)");
    if (m.stride(3) != 1) m = m.contiguous();
    a.mb = m.size(0) == 1 ? 0 : m.stride(0);
    a.mh = m.size(1) == 1 ? 0 : m.stride(1);
    a.mq = m.stride(2);
    if (m.scalar_type() == torch::kBool)
      a.bmask = reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());
    else
      a.fmask = m.data_ptr<float>();
  }
  auto out = torch::empty({q.size(0), q.size(1)}, q.options());
  a.out = out.data_ptr<float>();
  a.ldo = out.stride(0);
  const Isa* isa = current().load();
  // heads a few at a time, kChunks pieces per thread
  const int64_t BH = batch * heads, P = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), BH));
  take_in_turn(BH, std::max<int64_t>(1, BH / (P * kChunks)),
               [&](int64_t b0, int64_t b1) { isa->i8_attention(a, b0, b1); });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "obert sparse CPU kernels (fp32 blocked CSR, int8 4-blocks)";
  m.def("available_isas", &available, "instruction sets this CPU can run, fastest first");
  m.def("isa", [] { return std::string(current().load()->name); }, "the instruction set in use");
  m.def("set_isa", &set_isa, "use 'auto' or one of available_isas()");
  m.def("spmm_f32", &spmm_f32, "y = x W^T + b with W in blocked CSR (fp32)", py::arg("x"),
        py::arg("row_ptr"), py::arg("col"), py::arg("val"), py::arg("bs"), py::arg("n"),
        py::arg("bias") = py::none(), py::arg("act") = 0, py::arg("residual") = py::none(),
        // no Python object is touched inside: other Python threads run meanwhile
        py::call_guard<py::gil_scoped_release>());
  m.def("spmm_i8", &spmm_i8, "y = x W^T + b with int8 4-blocks, dynamic per-token activations",
        py::arg("x"), py::arg("row_ptr"), py::arg("col"), py::arg("wq"), py::arg("sw"),
        py::arg("wsum"), py::arg("n"), py::arg("bias") = py::none(), py::arg("act") = 0,
        py::arg("residual") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("i8_tile", [] { return std::string(pair_rows().load() ? "pairs" : "rows"); },
        "how the AVX-512 INT8 kernel walks a row group: 'pairs' or 'rows'");
  m.def("set_i8_tile", &set_i8_tile, "'pairs' (default) or 'rows' (one row at a time)");
  m.def("prep_timer", &prep_timer,
        "nanoseconds spent preparing activations since the last call; on: keep timing (profiles)");
  m.def("ffn_i8", &ffn_i8, "GELU(x W1^T + b1) W2^T + b2 (+ x with add_input), both int8 4-blocks, one token tile at a time",
        py::arg("x"), py::arg("row_ptr1"), py::arg("col1"), py::arg("wq1"), py::arg("sw1"),
        py::arg("wsum1"), py::arg("n1"), py::arg("bias1"), py::arg("row_ptr2"), py::arg("col2"),
        py::arg("wq2"), py::arg("sw2"), py::arg("wsum2"), py::arg("n2"), py::arg("bias2"),
        py::arg("add_input") = false, py::call_guard<py::gil_scoped_release>());
  m.def("attention_i8", &attention_i8, "self-attention with int8 QK^T and softmax V",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("batch"), py::arg("heads"),
        py::arg("mask") = py::none(), py::arg("scaling") = 1.0,
        py::call_guard<py::gil_scoped_release>());
}
