// The CPU stats attention as one cache-resident loop (built and loaded by kernels/_compiled.py with torch's C++
// extension tools).  The algorithm is kernels/_cpu_stats.py's: blocks of complete score rows over the keys they can
// see, so every row statistic is final within its block.  What changes is the block: R query rows of the G heads
// that share one kv head (G * R rows, about 3 MB of float32 scores: SmolLM2 at 8k keys R = 32, 96 rows), small
// enough to stay in the L2 cache between the Q K^T matmul, the passes over each row (max and first argmax; exp and
// sums, written back as weights) and the P V matmul, where the PyTorch path moves a block six times that size through
// memory once per operation.  Threads: see stats_forward.
//
// Per row i (position pos = i + N - M) over keys j < k_vis (pos + 1 under causal attention, else N):
//   pass 1  m = max_j s_j, a = the first j holding m          (keys dropped by key_keep hold kMasked)
//           (with top-k) the k largest s_j and their keys
//   pass 2  c_j = max(s_j - m, kExpFloor), e_j = exp(c_j) (0 on dropped keys), l = sum e, d = sum e c
// then sink, window and span sums of e over their own keys, and received[j] += e_j / max(L, 1), where L = l, or with a
// learned sink logit z_h (gpt-oss) L = l + exp(min(z_h - m, kSinkClamp)).  With soft-capping (Gemma 2) the scores are
// first replaced by cap * tanh(s / cap), before the key-padding bias.
// Outputs are the un-normalised sums; kernels/_cpu_stats.py's _finish divides by l as for the PyTorch path.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr float kMasked = -1.0e30f;     // a dropped key's score (kernels/_cpu_stats.py: _MASKED)
constexpr float kEmptyBelow = -1.0e29f; // a row whose max is below this saw no key
constexpr float kExpFloor = -40.0f;     // exp is evaluated at max(s - m, kExpFloor) (see _cpu_stats._EXP_FLOOR)
constexpr float kSinkClamp = 80.0f;     // exponent clamp of a sink's term (see _cpu_stats._SINK_CLAMP)

struct Row {
  float max;
  int64_t argmax;
};

// Pass 1: max of s[0, n) and the first index holding it.  Each vector lane keeps its own max and the first index
// where it occurred (strictly greater replaces), then the lanes are merged: largest value, smallest index on ties.
Row max_and_first_argmax(const float* s, int64_t n) {
  constexpr int64_t W = Vec::size();
  Vec best(-std::numeric_limits<float>::infinity());
  Vec best_at(0.0f);  // indices as float: exact below 2^24 keys
  Vec at = Vec::arange(0.0f, 1.0f);
  const Vec step(static_cast<float>(W));
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    Vec x = Vec::loadu(s + j);
    Vec greater = x > best;  // all-ones lanes where x is larger
    best = Vec::blendv(best, x, greater);
    best_at = Vec::blendv(best_at, at, greater);
    at = at + step;
  }
  float lanes[W], lanes_at[W];
  best.store(lanes);
  best_at.store(lanes_at);
  Row row{-std::numeric_limits<float>::infinity(), n};
  for (int64_t w = 0; w < W; ++w) {
    const auto idx = static_cast<int64_t>(lanes_at[w]);
    if (lanes[w] > row.max || (lanes[w] == row.max && idx < row.argmax)) row = {lanes[w], idx};
  }
  for (; j < n; ++j) {  // the tail comes after every vector index, so only a strictly larger value wins
    if (s[j] > row.max) row = {s[j], j};
  }
  return row;
}

// Pass 2: e = exp(max(s - m, floor)) written over s, e = 0 where s holds kMasked (when `masked`); returns l and d.
template <bool masked>
std::pair<float, float> weights(float* s, int64_t n, float m) {
  constexpr int64_t W = Vec::size();
  const Vec vm(m), floor(kExpFloor), empty(kEmptyBelow), zero(0.0f);
  Vec l(0.0f), d(0.0f);
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    Vec x = Vec::loadu(s + j);
    Vec c = at::vec::maximum(x - vm, floor);
    Vec e = c.exp_u20();
    if constexpr (masked) e = Vec::blendv(zero, e, x > empty);
    l = l + e;
    d = at::vec::fmadd(e, c, d);
    e.store(s + j);
  }
  float l_sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, l);
  float d_sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, d);
  if (j < n) {  // the tail as one partial vector (zeros beyond n give c = floor, and are dropped below)
    const int64_t rest = n - j;
    Vec x = Vec::loadu(s + j, rest);
    Vec c = at::vec::maximum(x - vm, floor);
    Vec e = c.exp_u20();
    if constexpr (masked) e = Vec::blendv(zero, e, x > empty);
    float es[W], cs[W];
    e.store(es);
    c.store(cs);
    for (int64_t w = 0; w < rest; ++w) {
      l_sum += es[w];
      d_sum += es[w] * cs[w];
    }
    e.store(s + j, rest);
  }
  return {l_sum, d_sum};
}

// The k largest of s[0, n) (k <= 8), descending, and their keys, into vals / keys (left as -inf / -1 past n).  One
// vector compare per W keys against the current k-th value; the rare lanes above it are inserted in order, and a
// lane only replaces a strictly smaller value, so among equal scores the first keys are kept.
void top_k(const float* s, int64_t n, int64_t k, float* vals, int64_t* keys) {
  constexpr int64_t W = Vec::size();
  int64_t count = 0;
  auto insert = [&](float x, int64_t j) {
    if (count == k && !(x > vals[k - 1])) return;
    int64_t p = count < k ? count++ : k - 1;
    for (; p > 0 && x > vals[p - 1]; --p) {
      vals[p] = vals[p - 1];
      keys[p] = keys[p - 1];
    }
    vals[p] = x;
    keys[p] = j;
  };
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const float kth = count < k ? -std::numeric_limits<float>::infinity() : vals[k - 1];
    Vec x = Vec::loadu(s + j);
    const int above = ~(x > Vec(kth)).zero_mask() & ((1 << W) - 1);  // lanes holding a score above the k-th
    if (above == 0 && count == k) continue;
    for (int64_t w = 0; w < W; ++w) {
      if (count < k || (above >> w & 1)) insert(s[j + w], j + w);
    }
  }
  for (; j < n; ++j) insert(s[j], j);
}

// s = cap * tanh(s / cap) over s[0, n), with tanh(y) = sign(y) (1 - e) / (1 + e), e = exp(-2 |y|) by the fast
// exp_u20 (|y| clamped at 20: e^-40 leaves tanh = 1 in float32).  Absolute error about cap * 1e-7, the float32
// resolution of scores of that size; at::vec's tanh is twice as slow here.
void soft_cap(float* s, int64_t n, float cap, float inv_cap) {
  const Vec two_inv(2.0f * inv_cap), vcap(cap), one(1.0f), zero(0.0f), limit(40.0f);
  at::vec::map<float>([&](Vec x) {
    Vec e = (zero - at::vec::minimum(x.abs() * two_inv, limit)).exp_u20();
    Vec t = (one - e) / (one + e) * vcap;
    return Vec::blendv(t, zero - t, x < zero);
  }, s, s, n);
}

float range_sum(const float* e, int64_t lo, int64_t hi) {
  if (hi <= lo) return 0.0f;
  return at::vec::reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, e + lo, hi - lo);
}

// received[j] += e[j] * w for j < n
void add_scaled(float* received, const float* e, int64_t n, float w) {
  at::vec::map2<float>([w](Vec r, Vec x) { return at::vec::fmadd(x, Vec(w), r); }, received, received, e, n);
}

}  // namespace

// qs [B, H, M, D] (already scaled), kt [B, Hkv, D, N], v [B, Hkv, N, D]: float32, contiguous.  key_keep: [B, N] bool
// or an empty tensor.  spans: [S, 2] int64.  softcap: > 0 soft-caps the scores, 0 leaves them.  sinks: [H] float32
// sink logits or an empty tensor (only the received mass needs them here; _finish applies them to the rest).  Returns out (P V before the division by l) [B, H, M, D]; row_max, l,
// e_dot, sink, window [B, H, M]; argmax int64 [B, H, M]; span [B, H, M, S]; received [B, H, N or 0]; the top-k
// scores [B, H, M, topk] (descending, -inf past the visible keys) and their keys (int64, -1 there).
std::vector<at::Tensor> stats_forward(const at::Tensor& qs, const at::Tensor& kt, const at::Tensor& v,
                                      const at::Tensor& key_keep, bool causal, int64_t sink_tokens, int64_t window,
                                      const at::Tensor& spans, int64_t topk, bool key_stats,
                                      int64_t block_rows, double softcap, const at::Tensor& sinks) {
  TORCH_CHECK(qs.scalar_type() == at::kFloat && kt.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "stats_forward: float32 inputs");
  TORCH_CHECK(qs.is_contiguous() && kt.is_contiguous() && v.is_contiguous(), "stats_forward: contiguous inputs");
  const int64_t B = qs.size(0), H = qs.size(1), M = qs.size(2), D = qs.size(3);
  const int64_t Hkv = kt.size(1), N = kt.size(3), G = H / Hkv, off = N - M;
  const int64_t S = spans.size(0);
  const bool has_keep = key_keep.numel() > 0;
  const bool has_sinks = sinks.numel() > 0;
  TORCH_CHECK(!has_sinks || (sinks.scalar_type() == at::kFloat && sinks.numel() == H), "stats_forward: sinks [H] float32");
  auto sinks_c = has_sinks ? sinks.contiguous() : sinks;
  const float* sink_logit = has_sinks ? sinks_c.data_ptr<float>() : nullptr;
  const float cap = static_cast<float>(softcap), inv_cap = softcap > 0 ? 1.0f / cap : 0.0f;
  const int64_t R = std::max<int64_t>(1, std::min(block_rows, M));
  const auto f32 = qs.options();

  auto out = at::empty({B, H, M, D}, f32);
  auto row_max = at::empty({B, H, M}, f32), l_sum = at::empty({B, H, M}, f32), e_dot = at::empty({B, H, M}, f32);
  auto sink = at::empty({B, H, M}, f32), win = at::empty({B, H, M}, f32);
  auto argmax = at::empty({B, H, M}, qs.options().dtype(at::kLong));
  auto span = at::empty({B, H, M, S}, f32);
  auto received = at::zeros({B, H, key_stats ? N : 0}, f32);
  auto top_vals = at::full({B, H, M, topk}, -std::numeric_limits<float>::infinity(), f32);
  auto top_keys = at::full({B, H, M, topk}, -1, qs.options().dtype(at::kLong));
  auto spans_c = spans.to(at::kLong).contiguous();
  const int64_t* sp = spans_c.data_ptr<int64_t>();
  auto keep_f = has_keep ? at::where(key_keep, 0.0f, kMasked).to(at::kFloat).contiguous() : at::Tensor();

  // Work items are blocks (batch row, kv head, R query rows); they write disjoint rows of every output.  Item i goes
  // to lane i mod L, so each lane gets blocks from every part of the causal triangle (balanced work), and each lane
  // adds its received mass into a sum of its own, added up in lane order after the loop: the result depends on the
  // thread count only, never on scheduling.  The matmuls inside a lane run on its thread (at::parallel_for nests no
  // threads).
  const int64_t n_blocks = (M + R - 1) / R, units = B * Hkv, n_items = units * n_blocks;
  const int64_t L = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_items));
  auto received_lanes = L == 1 ? received.unsqueeze(0) : at::zeros({L, B, H, key_stats ? N : 0}, f32);
  at::parallel_for(0, L, 1, [&](int64_t l0, int64_t l1) {
    auto scores = at::empty({G * R, N}, f32);
    auto q_blk = at::empty({G * R, D}, f32);
    auto pv = at::empty({G * R, D}, f32);
    for (int64_t lane = l0; lane < l1; ++lane) {
      float* lane_received = received_lanes[lane].data_ptr<float>();
      for (int64_t item = lane; item < n_items; item += L) {
        const int64_t u = item % units, b = u / Hkv, g = u % Hkv;
        const int64_t r0 = (item / units) * R, r1 = std::min(M, r0 + R), c = r1 - r0;
        const auto k_bg = kt[b][g], v_bg = v[b][g];
        const float* bias = has_keep ? keep_f.data_ptr<float>() + b * N : nullptr;
        const int64_t k_end = causal ? r1 + off : N;  // keys some row of the block sees
        for (int64_t hl = 0; hl < G; ++hl) q_blk.narrow(0, hl * c, c).copy_(qs[b][g * G + hl].narrow(0, r0, c));
        // scores as [G * c, k_end] with row stride k_end, in the first G * c * k_end floats of the buffer
        auto s_blk = scores.view({-1}).narrow(0, 0, G * c * k_end).view({G * c, k_end});
        at::mm_out(s_blk, q_blk.narrow(0, 0, G * c), k_bg.narrow(1, 0, k_end));
        float* s0 = s_blk.data_ptr<float>();
        for (int64_t hl = 0; hl < G; ++hl) {
          const int64_t h = g * G + hl;
          const int64_t o = (b * H + h) * M;  // flat index of row 0 of (b, h)
          for (int64_t r = 0; r < c; ++r) {
            const int64_t i = r0 + r, pos = i + off;
            const int64_t k_vis = causal ? pos + 1 : N;
            float* s = s0 + (hl * c + r) * k_end;
            if (softcap > 0) soft_cap(s, k_vis, cap, inv_cap);
            if (bias) at::vec::map2<float>([](Vec x, Vec y) { return x + y; }, s, s, bias, k_vis);
            const Row mx = max_and_first_argmax(s, k_vis);
            if (topk) {
              top_k(s, k_vis, topk, top_vals.data_ptr<float>() + (o + i) * topk,
                    top_keys.data_ptr<int64_t>() + (o + i) * topk);
            }
            const auto [l, d] = bias ? weights<true>(s, k_vis, mx.max) : weights<false>(s, k_vis, mx.max);
            std::fill(s + k_vis, s + k_end, 0.0f);  // keys after the row's position: weight 0 in P V
            row_max.data_ptr<float>()[o + i] = mx.max;
            argmax.data_ptr<int64_t>()[o + i] = mx.argmax;
            l_sum.data_ptr<float>()[o + i] = l;
            e_dot.data_ptr<float>()[o + i] = d;
            sink.data_ptr<float>()[o + i] = range_sum(s, 0, std::min(sink_tokens, k_vis));
            win.data_ptr<float>()[o + i] =
                window ? range_sum(s, std::max<int64_t>(0, pos - window + 1), std::min(pos + 1, k_vis)) : 0.0f;
            float* sp_out = span.data_ptr<float>() + (o + i) * S;
            for (int64_t t = 0; t < S; ++t) sp_out[t] = range_sum(s, sp[2 * t], std::min(sp[2 * t + 1], k_vis));
            const float denom = sink_logit ? l + std::exp(std::min(sink_logit[h] - mx.max, kSinkClamp)) : l;
            if (key_stats) add_scaled(lane_received + (b * H + h) * N, s, k_vis, 1.0f / std::max(denom, 1.0f));
          }
        }
        auto pv_blk = pv.narrow(0, 0, G * c);
        at::mm_out(pv_blk, s_blk, v_bg.narrow(0, 0, k_end));
        for (int64_t hl = 0; hl < G; ++hl) out[b][g * G + hl].narrow(0, r0, c).copy_(pv_blk.narrow(0, hl * c, c));
      }
    }
  });
  if (L > 1) {
    for (int64_t lane = 0; lane < L; ++lane) received.add_(received_lanes[lane]);  // lane order: deterministic
  }
  return {out, row_max, l_sum, e_dot, argmax, sink, win, span, received, top_vals, top_keys};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("stats_forward", &stats_forward, "stats attention (CPU, fused)"); }
