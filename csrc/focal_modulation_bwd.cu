// Backward kernels. Nothing per level is saved by the forward, and the backward runs no forward sweep:
// grad_modulator = grad_out * q needs no modulator, so it comes first. The fused path:
//   output_bwd      grad_modulator and the per-thread partials that give dbias and dG (below)
//   context_bwd     one row-streaming sweep that recomputes the levels, writes ctx_local on the way (the h GEMMs'
//                   operand) and runs their adjoint chain a few rows behind
// then grad_q = grad_out * h(ctx_all) by the forward's epilogue (output_fwd, with grad_out as its q).
// The fallback for images too wide for its shared memory recomputes z_1..z_{L-1} and ctx_local with
// conv_level_fwd, then runs, with grad_ctx_all = grad_modulator W from a GEMM:
//   conv_level_bwd  levels L-1 .. 0: grad_pre_l and the per-group gate-gradient partials
//   weight_grad     per-level depthwise weight gradient partials (split reduction)
//   conv_adjoint    grad_ctx from level 0's grad_pre
// Every partial is reduced by reduce_sum in a fixed order: the gradients are bitwise deterministic.
#include "focal_modulation_sweep.cuh"

namespace focalfast {

// Pixels per strip of a context_bwd block: 4 where kStrip-pixel items (strips x chunk) fill at most half a warp
// (stages 3-4 lrf: 14x14 with 8 channels, 7x7 with 16), so that the one warp's lanes all work, else kStrip. The
// rings are the same (strip_width); a 4-pixel item pays 3 (K = 3) to 5 (K = 13) 16-byte loads a window row for
// 4 K FMAs instead of 4 to 6 for 8 K.
int context_bwd_strip(int W, int chunk) { return 2 * (strip_width(W) / kStrip * chunk) <= 32 ? 4 : kStrip; }

namespace {

// Threads of a context_bwd block: the warps its conv phases' items (strips x chunk) fill, 1 to kSweepThreads / 32. Unlike
// context_fwd's blocks (sweep_threads: at least 2 warps), no warp idles through the conv phases of a small map (7x7:
// 32 items) while paying every step's bookkeeping. A multiple of chunk (chunk <= 256): a thread's channel is the
// same in every conv phase. A thread has one item: blocks of more items do not run (context_bwd_smem_bytes).
int context_bwd_threads(int items) { return 32 * min_int(kSweepThreads / 32, (items + 31) / 32); }

// Calls f(std::integral_constant<int, S>{}) for a strip S of context_bwd_strip (4 or kStrip).
template <class F>
void dispatch_bwd_strip(int strip, F&& f) {
  if (strip == 4) return f(std::integral_constant<int, 4>{});
  f(std::integral_constant<int, kStrip>{});
}

// Shared memory of context_bwd (fp32), computed on the host. With lag_l = 2R - o_{l+1} (the adjoint of level l
// runs that many rows behind the ctx row being loaded) the rings (RowRing) are as deep as their readers need:
//   z_l          levels' inputs, 2R - 2 o_l + 1 rows (z_L: 1): read by the recompute,
//                the weight gradient (rows y +- r_l at lag_l) and the gate gradient of level l - 1;
//                z_0 = ctx as deep as the others (2R + 1 rows): level 0's weight gradient reads it
//   gelu_grad_l  GELU'(pre_l), 2R - 2 o_{l+1} + 1 rows: written at lag o_{l+1}, read at lag_l
//   grad_pre_l   k_l rows: read by level l - 1's adjoint conv (grad_ctx for l = 0)
//                and by level l's weight gradient
//   gates        scale * gates_0 .. gates_{L-1} (a "channel" per level), 2R - r_0 + 1 rows: loaded at lag 0
//                (once per pixel, not once per channel), read by ctx_local (lag R) and the adjoints (up to
//                lag_0 = 2R - r_0)
//   gate_terms   a row per level l <= L of grad_ctx_all * z_{l+1} (l < L) and grad_ctx_all * G (l = L) at the row
//                of level l's adjoint (lag_l; the global level at lag_{L-1}): written by the adjoints, summed over
//                8-channel groups (or in stacks the chunk's channels) by gate_partials. In blocks of 4 pixels:
//                [x / 4][c][x mod 4], so that an adjoint item stores its strip's terms, and a gate item loads a
//                channel of 4 pixels, with 16-byte accesses (term_block = 4 c + 4 floats = 4 (mod 32) for chunks of
//                8 or more channels: the stores of 8 consecutive blocks fall in distinct banks)
// Every ring row has one pitch and pad (ring_pad of the largest k; the gates' rows are shorter, L channels): a
// conv item's offset in any of them is the same (Item::at), computed once a sweep.
// Plus, where a thread's taps are not in its registers (taps_in_smem), the block's weights as TapRows and, where
// its weight-gradient sums are not (sums_in_smem), a column of [taps][threads] per thread. Register sums meet at the
// end in [taps][threads] at offset 0, over the rings (total covers it).
constexpr int kMaxStepRows = 5 + 3 * kMaxFocalLevel;

// The rings of ContextBwdLayout::ring: z_0 .. z_L, gelu_grad_0 .. gelu_grad_{L-1}, grad_pre_0 .., gates.
FF_HD constexpr int kZ(int l) { return l; }
FF_HD constexpr int kGeluGrad(int l) { return kMaxFocalLevel + 1 + l; }
FF_HD constexpr int kGradPre(int l) { return 2 * kMaxFocalLevel + 1 + l; }
constexpr int kGates = 3 * kMaxFocalLevel + 1, kBwdRings = kGates + 1;

// Where a step's ring rows sit in its table (BwdRingPlan): a phase's rows are one group, from a multiple of 4 on
// (a 16-byte shared load per 4 rows; k_L = 1 past the last level, as Chain::size):
//   load         z_0, gates at lag 0
//   local        gates, z_1 .. z_{L-1} at R (ctx_local's)
//   grad_ctx     grad_pre_0's k_0 rows from 2R - r_0
//   and per level l:
//   recompute    z_l's k_l rows from lag_fwd_l - r_l, then z_{l+1} and gelu_grad_l at lag_fwd_l
//   adjoint      grad_pre_{l+1}'s k_{l+1} rows from lag_bwd_l - r_{l+1} (the last level's: none read), then
//                gelu_grad_l, grad_pre_l, gates and z_{l+1} at lag_bwd_l
//   weight_grad  z_l's k_l rows from lag_bwd_l - r_l, then grad_pre_l at lag_bwd_l
// Chain fixes the sizes at compile time (the indices fold to constants) or reads them from the levels.
template <class Chain>
struct BwdRingIndex {
  static FF_HD constexpr int round4(int n) { return (n + 3) & ~3; }
  static constexpr int kLoad = 0, kLocal = 4, kGradCtx = 4 + kMaxFocalLevel;
  // Entries of a level's three groups (k its size, k_next the next level's).
  static FF_HD constexpr int level_rows(int k, int k_next) {
    return round4(k + 2) + round4(k_next + 4) + round4(k + 1);
  }
  static FF_HD int level_rows(const SweepLevels& lv, int m) {
    return level_rows(Chain::size(lv, m), Chain::size(lv, m + 1));
  }
  // Written out, not a loop: a constant where the chain's sizes and the level are.
  static FF_HD int recompute(const SweepLevels& lv, int l) {
    static_assert(kMaxFocalLevel == 4, "recompute adds the groups of up to 4 levels");
    return kGradCtx + round4(Chain::size(lv, 0)) + (l > 0 ? level_rows(lv, 0) : 0) + (l > 1 ? level_rows(lv, 1) : 0) +
           (l > 2 ? level_rows(lv, 2) : 0) + (l > 3 ? level_rows(lv, 3) : 0);
  }
  static FF_HD int adjoint(const SweepLevels& lv, int l) { return recompute(lv, l) + round4(Chain::size(lv, l) + 2); }
  static FF_HD int weight_grad(const SweepLevels& lv, int l) {
    return adjoint(lv, l) + round4(Chain::size(lv, l + 1) + 4);
  }
  static FF_HD int count(const SweepLevels& lv) { return recompute(lv, Chain::levels(lv)); }
};
using BwdRingBound = BwdRingIndex<GenericChain>;  // every level of the largest size
constexpr int kMaxRingRows = BwdRingBound::kGradCtx + BwdRingBound::round4(kMaxKernelSize) +
                             kMaxFocalLevel * BwdRingBound::level_rows(kMaxKernelSize, kMaxKernelSize);
constexpr int kRingTable = 4 * kMaxStepRows;  // a step table: kMaxStepRows StepRow entries, then its ring rows

struct ContextBwdLayout {
  int weights = 0, sums = 0, total = 0, chunk_shift = 0, threads = 0;
  int pad = 0;                             // zero columns on each side of every ring row: ring_pad of the largest k
  int strips = 0, items = 0;               // strips a row (of context_bwd_strip pixels); conv-phase items: strips x chunk
  int lag_fwd[kMaxFocalLevel] = {};        // o_{l+1}: the recompute of level l trails the ctx row by this much
  int lag_bwd[kMaxFocalLevel] = {};        // 2R - o_{l+1}: its adjoint and gradients
  int level_sums[kMaxFocalLevel] = {};     // sum_{m < l} k_m^2 * threads: level l's weight-gradient sums
  RowRing ring[kBwdRings];                 // z_0 .. z_L, gelu_grad_0 .., grad_pre_0 .., gates: by kZ, kGeluGrad, ...
  int gate_terms = 0, term_block = 0, term_level = 0;  // gate_terms: level l, pixel x's channel c at
                                                       // l * term_level + (x / 4) * term_block + 4 c + x mod 4
  int step_rows = 0;   // two step tables, a step's and the next one's
  int step_table = 0;  // floats of one: kRingTable + BwdRingPlan's count
  TapRows taps;  // the fields above keep their 8-byte pairs
  int gate_strip_shift = 0;  // gate_partials' strips: 1 << this >= strips of kStrip

  // strip: pixels per item, 4 or kStrip (context_bwd_strip's choice where 0).
  ContextBwdLayout(const SweepLevels& lv, int W, int chunk, int strip, bool taps_in_smem, bool sums_in_smem) {
    SmemAllocator a;
    const int R = lv.offset(lv.L);
    strips = strip_width(W) / (strip ? strip : context_bwd_strip(W, chunk));
    items = strips * chunk;
    threads = context_bwd_threads(items);
    while ((1 << chunk_shift) < chunk) ++chunk_shift;
    taps = TapRows(lv);
    weights = int(a.take(taps_in_smem ? int64_t(taps.pitch) * chunk : 0));
    sums = int(a.take(sums_in_smem ? int64_t(lv.taps()) * threads : 0));
    for (int l = 0; l < lv.L; ++l) pad = max_int(pad, ring_pad(lv.k[l]));
    for (int l = 0; l <= lv.L; ++l) ring[kZ(l)] = row_ring(a, 2 * (R - lv.offset(l)) + 1, W, chunk, pad);
    for (int l = 0; l < lv.L; ++l) {
      ring[kGeluGrad(l)] = row_ring(a, 2 * (R - lv.offset(l + 1)) + 1, W, chunk, pad);
      ring[kGradPre(l)] = row_ring(a, lv.k[l], W, chunk, pad);
      lag_fwd[l] = lv.offset(l + 1);
      lag_bwd[l] = 2 * R - lv.offset(l + 1);
      level_sums[l] = lv.taps_before(l) * threads;
    }
    ring[kGates] = row_ring(a, lag_bwd[0] + 1, W, lv.L, pad);
    term_block = 4 * chunk + 4;
    term_level = strip_width(W) / 4 * term_block;
    while ((1 << gate_strip_shift) < strip_width(W) / kStrip) ++gate_strip_shift;
    gate_terms = int(a.take(int64_t(lv.L + 1) * term_level));
    step_table = kRingTable + BwdRingIndex<GenericChain>::count(lv);
    step_rows = int(a.take(2 * int64_t(step_table)));
    total = int(a.used);
    if (total < lv.taps() * threads) total = lv.taps() * threads;
  }
  // Whether a block runs the schedule: a thread an item (threads stop at kSweepThreads).
  bool runs() const { return items <= threads; }
  FF_HD const RowRing& z(int l) const { return ring[kZ(l)]; }
  FF_HD const RowRing& gates() const { return ring[kGates]; }
};

// The global rows a context_bwd step reads or writes, decoded once a step for all its phases: entry e is band row
// y_top + lag[e] (SweepBand::row) as flags (inside the band's images, owned by the band) and the element offset
// b sb[e] + y sy[e] of its row in one view (zero strides: the flags alone). Lanes decode the entries side by side
// (one entry's instructions a warp, not one a phase and row: a stack's row is a quotient, a view's row a 64-bit
// multiply-add); a phase reads its row with one 16-byte shared load. Entries (BwdRowPlan::*): ctx and gates at lag 0,
// grad_ctx at 2R, grad_mean and pooled (image only), and per level l the recompute's row (lag_fwd; the last level's
// in ctx_local), the adjoint's (lag_bwd, in grad_ctx_all) and the gate partials' (lag_bwd, in gate_partial).
struct BwdRowPlan {
  int64_t sb[kMaxStepRows] = {}, sy[kMaxStepRows] = {};
  int lag[kMaxStepRows] = {};
  int count = 0;
  static constexpr int kCtx = 0, kGates = 1, kGradCtx = 2, kGradMean = 3, kPooled = 4;
  static FF_HD constexpr int recompute(int l) { return 5 + l; }
  static FF_HD constexpr int adjoint(int L, int l) { return 5 + L + l; }
  static FF_HD constexpr int partial(int L, int l) { return 5 + 2 * L + l; }

  BwdRowPlan() = default;
  BwdRowPlan(const ContextBwdParams& p, const ContextBwdLayout& s) {
    const int L = p.levels.L, R = p.levels.offset(L);
    const int64_t pixel_partials = int64_t(L + 1) * gate_partial_columns(p.geo, p.chunk, p.stack);
    count = 5 + 3 * L;
    put(kCtx, 0, p.ctx.sb, p.ctx.sy);
    put(kGates, 0, p.gates.sb, p.gates.sy);
    put(kGradCtx, 2 * R, p.grad_ctx.sb, p.grad_ctx.sy);
    put(kGradMean, R, p.grad_mean.sb, 0);
    put(kPooled, R, p.pooled.sb, 0);
    for (int l = 0; l < L; ++l) {
      put(recompute(l), s.lag_fwd[l], l == L - 1 ? p.ctx_local.sb : 0, l == L - 1 ? p.ctx_local.sy : 0);
      put(adjoint(L, l), s.lag_bwd[l], p.grad_ctx_all.sb, p.grad_ctx_all.sy);
      put(partial(L, l), s.lag_bwd[l], p.geo.H * p.geo.W * pixel_partials, p.geo.W * pixel_partials);
    }
  }
  void put(int e, int lag_e, int64_t sb_e, int64_t sy_e) {
    lag[e] = lag_e;
    sb[e] = sb_e;
    sy[e] = sy_e;
  }
};

// The ring rows a context_bwd step reads or writes (BwdRingIndex's groups), decoded once a step as BwdRowPlan's
// entries are: entry e is ring ring(e)'s row y_top + lag(e), as its offset in shared memory (a slot and a
// multiply-add a row, once a step rather than in every phase).
struct BwdRingPlan {
  uint16_t entry[kMaxRingRows] = {};  // ring << 8 | lag
  int count = 0;
  FF_HD int ring(int e) const { return entry[e] >> 8; }
  FF_HD int lag(int e) const { return entry[e] & 0xff; }

  BwdRingPlan() = default;
  BwdRingPlan(const ContextBwdParams& p, const ContextBwdLayout& s) {
    using Index = BwdRingIndex<GenericChain>;
    const SweepLevels& lv = p.levels;
    const int L = lv.L, R = s.lag_fwd[L - 1], k0 = lv.k[0];
    count = Index::count(lv);
    put(Index::kLoad, kZ(0), 0, 1);
    put(Index::kLoad + 1, kGates, 0, 1);
    put(Index::kLocal, kGates, R, 1);
    for (int l = 1; l < L; ++l) put(Index::kLocal + l, kZ(l), R, 1);
    put(Index::kGradCtx, kGradPre(0), 2 * R - k0 / 2, k0);
    for (int l = 0; l < L; ++l) {
      const int k = lv.k[l], next = l + 1 < L ? l + 1 : l, k_next = GenericChain::size(lv, l + 1);
      const int lag_fwd = s.lag_fwd[l], lag_bwd = s.lag_bwd[l];
      const int e = Index::recompute(lv, l), a = Index::adjoint(lv, l), w = Index::weight_grad(lv, l);
      put(e, kZ(l), lag_fwd - k / 2, k);
      put(e + k, kZ(l + 1), lag_fwd, 1);
      put(e + k + 1, kGeluGrad(l), lag_fwd, 1);
      put(a, kGradPre(next), lag_bwd - k_next / 2, k_next);
      put(a + k_next, kGeluGrad(l), lag_bwd, 1);
      put(a + k_next + 1, kGradPre(l), lag_bwd, 1);
      put(a + k_next + 2, kGates, lag_bwd, 1);
      put(a + k_next + 3, kZ(l + 1), lag_bwd, 1);
      put(w, kZ(l), lag_bwd - k / 2, k);
      put(w + k, kGradPre(l), lag_bwd, 1);
    }
  }
  // Entries e .. e + n - 1: ring's rows from lag `first` on.
  void put(int e, int ring_index, int first, int n) {
    for (int i = 0; i < n; ++i) entry[e + i] = uint16_t(ring_index << 8 | (first + i));
  }
};

// A decoded BwdRowPlan entry: its row's flags and its element offset in the entry's view.
struct StepRow {
  bool inside, owns;
  int64_t offset;
};

// The view t from element `offset` on (a row of it: at(0, 0, x) is pixel x of that row).
template <typename T>
FF_HD View view_from(const View& t, int64_t offset) {
  View v = t;
  v.ptr = static_cast<T*>(t.ptr) + offset;
  return v;
}

// How many taps a thread keeps in registers for its channel (the conv phases' items run channel fastest on a
// multiple of chunk threads, so a thread's channel is the same in every phase): all of a FixedChain of at most
// two levels (FocalNet srf: 34), none otherwise (those read the block's TapRows in shared memory).
template <class Chain>
constexpr int kBwdRegisterTaps = 0;
template <int K0, int kLevels>
constexpr int kBwdRegisterTaps<FixedChain<K0, kLevels>> =
    kLevels <= 2 ? FixedChain<K0, kLevels>::taps_before(kLevels) : 0;

// How many weight-gradient sums a thread keeps in registers for its channel: all of a FixedChain of at most three levels
// (FocalNet srf: 34, lrf: 83), none otherwise (those add to a column of [taps][threads] in shared memory).
template <class Chain>
constexpr int kBwdRegisterSums = 0;
template <int K0, int kLevels>
constexpr int kBwdRegisterSums<FixedChain<K0, kLevels>> =
    kLevels <= 3 ? FixedChain<K0, kLevels>::taps_before(kLevels) : 0;

// A thread's weight-gradient sums for its channel, as weight_grad_strip adds to them: sums(tap) of one level.
// ColumnSums: the thread's column of a [taps][threads] array (shared memory, or host memory on the host, where a
// column stands for the GPU thread that runs the item); RegisterSums: all taps of the chain in registers (a GPU
// thread, kBwdRegisterSums), level(): a level's from `first` on; NoThreadSums: none.
struct ColumnSums {
  float* w;    // the level's tap 0 in the thread's column
  int stride;  // threads: floats from one tap to the next
  FF_HD float& operator()(int tap) const { return w[tap * stride]; }
};

struct NoThreadSums {};

template <int kCount>
struct RegisterSums {
  float w[kCount] = {};
  template <int kFirst>
  struct Level {
    float (&w)[kCount];
    FF_HD float& operator()(int tap) const { return w[kFirst + tap]; }
  };
  template <int kFirst>
  FF_HD Level<kFirst> level() {
    return {w};
  }
  // dst[i * stride] = w[i] for every tap i.
  FF_HD void store(float* dst, int stride) const {
FF_UNROLL
    for (int i = 0; i < kCount; ++i) dst[i * stride] = w[i];
  }
};

// A block: a band (SweepBand: rows [y0, y1) of image b, or a stack of whole images swept as one tall image), channels
// [c_begin, c_begin + chunk), bottom to top from band row y_start = y1 - 1 + 2R of its last image (the halo; H - 1 at
// most); step t handles, for a quantity produced `lag` rows behind, band row v = y_start - t + lag (SweepBand::row:
// its image and image row; rows outside the band's images are zeros; outputs: rows of the band only). A stack pays
// the 2R halo steps once, not once an image (7x7, lrf: 10 + 9 / stack steps an image instead of 19). Items are
// (strip of S pixels, channel) unless said otherwise:
//   load          ctx row (lag 0) into z_0 (load_ctx_strip); its gates, (strip, level) of the first items, level fastest
//   recompute     level l at lag o_{l+1}: pre_l = dwconv_l(z_l), z_{l+1} = GELU(pre_l), GELU'(pre_l); at the
//                 last level (lag R) also ctx_local = scale * sum_l gates_l z_{l+1} of the row (band rows only):
//                 z_1 .. z_{L-1} of that row are still in their rings (written R - o_{l+1} rows ago)
//   adjoint       level l = L-1 .. 0 at lag_l = 2R - o_{l+1}:
//                   dz = scale * gates_l * grad_ctx_all + (grad_mean at the last level, else
//                        the adjoint conv of grad_pre_{l+1}, whose rows y +- r_{l+1} are in by now)
//                   grad_pre_l = dz * GELU'(pre_l)
//                 and level l's gate_terms grad_ctx_all * z_{l+1} (the last level's also grad_ctx_all * G)
//   reduce        grad_ctx = adjoint conv of grad_pre_0 (lag 2R);
//                 weight gradients dw_l[i, j] += sum_x grad_pre_l[y, x] z_l[y + i - r, x + j - r] (lag_l), an item
//                 per strip and channel into its thread's sums (ThreadSums); at the end of the sweep the sums of a
//                 channel's threads are added in thread order;
//                 gate partials: level l's gate_terms summed over the chunk's channels (lag_l), an item per (column,
//                 level l < L); the item of level L - 1 also sums the global level's (same row)
// Cost per output element and level of size K (FMAs and shared-memory accesses, as context_fwd's):
// recompute K^2 FMAs + one GELU and GELU'; adjoint K_{l+1}^2 FMAs (none at the last level), a 2-byte global
// load (grad_ctx_all), 1/4 16-byte shared gate load, and for the gate terms a multiply, 1/4 16-byte shared load and
// 1/4 16-byte shared store (two at the last level); weight gradient K^2 FMAs with K (S + 2 ring_pad(K)) / 4 / S
// 16-byte loads (and a shared load and store per tap and S FMAs where the sums are not in registers); grad_ctx k_0^2
// FMAs; gate partials a shared load and an add per level (the last level two); ctx_local an
// FMA and 1/4 (1/2 but the last level) 16-byte shared loads per level, and a 2-byte global store. Conv taps: a kernel
// row's tap_row_width(K) / 4 16-byte shared loads per K S FMAs, none where the thread holds them (kBwdRegisterTaps).
template <typename T, class Chain, int S, bool kStacked>
struct ContextBwd {
  using Params = ContextBwdParams;
  static constexpr int kRegisterTaps = kBwdRegisterTaps<Chain>;
  using ThreadTaps = std::conditional_t<kRegisterTaps == 0, NoThreadTaps, RegisterTaps<kRegisterTaps>>;
#ifdef __CUDA_ARCH__
  using ThreadSums = std::conditional_t<kBwdRegisterSums<Chain> == 0, NoThreadSums, RegisterSums<kBwdRegisterSums<Chain>>>;
#else
  using ThreadSums = NoThreadSums;  // the host keeps every thread's column in host memory
#endif
  struct Args {
    Params p;
    ContextBwdLayout s;
    BwdRowPlan rows;
    BwdRingPlan rings;
  };
  static constexpr const char* kName = "context_bwd";
  using Index = BwdRingIndex<Chain>;
  // ptxas plans registers for one block per SM: shared memory, not registers, limits context_bwd's blocks (at most
  // 8 warps), and without it ptxas squeezes the lrf chain into 64 registers with a stack frame (a spill).
  static constexpr int kMinBlocksPerSm = 1;

  // A conv-phase item: the strip of S pixels from x0 of channel c; at: its pixel x0 in a row of any of the chunk's
  // rings (they share one pitch and pad). A block has a thread an item (context_bwd_smem_bytes: no block has more
  // items than threads), so that a phase's items are one `if` on the GPU, not a loop; the host runs them in order.
  struct Item {
    int item, x0, c, at;
  };
  static FF_HD Item item_at(const ContextBwdLayout& s, int item) {
    const int x0 = (item >> s.chunk_shift) * S, c = item & ((1 << s.chunk_shift) - 1);
    return {item, x0, c, s.z(0).channel(c) + s.pad + x0};
  }
  // The thread's first item, decoded once a sweep: on the GPU its fields pass through an opaque move, so that the
  // compiler keeps them in registers instead of decoding threadIdx.x again in every phase.
  static FF_HD Item first_item(const ContextBwdLayout& s) {
#ifdef __CUDA_ARCH__
    const Item it = item_at(s, int(threadIdx.x));
    return {kept(it.item), kept(it.x0), kept(it.c), kept(it.at)};
#else
    return item_at(s, 0);
#endif
  }
#ifdef __CUDA_ARCH__
#define FF_FOR_EACH_ITEM(it, first, s) if (const Item it = (first); it.item < (s).items)
#else
#define FF_FOR_EACH_ITEM(it, first, s) for (Item it = (first); it.item < (s).items; it = item_at((s), it.item + 1))
#endif

  // Level l's taps for channel c: the thread's registers or the channel's TapRows row in shared memory.
  static FF_HD RowTaps level_taps(const ThreadTaps&, const float* smem, const ContextBwdLayout& s, int l, int c) {
    return RowTaps{smem + s.weights + c * s.taps.pitch + s.taps.level[l]};
  }
  template <int I>
  static FF_HD auto level_taps(const ThreadTaps& taps, const float* smem, const ContextBwdLayout& s, LevelIndex<I> l,
                               int c) {
    if constexpr (kRegisterTaps > 0) {  // all levels
      return taps.template level<Chain::taps_before(I)>();
    } else {
      return level_taps(taps, smem, s, int(l), c);
    }
  }
  // A level's weight-gradient sums of the thread that runs `item` (thread `item`): its registers, or its column of
  // `columns`.
  static FF_HD ColumnSums level_sums(NoThreadSums&, float* columns, const ContextBwdLayout& s, int l, int item) {
    return ColumnSums{columns + s.level_sums[l] + item, s.threads};
  }
  template <int I, class Sums>
  static FF_HD auto level_sums(Sums& sums, float* columns, const ContextBwdLayout& s, LevelIndex<I> l, int item) {
    if constexpr (std::is_same_v<Sums, NoThreadSums>) {
      return level_sums(sums, columns, s, int(l), item);
    } else {
      return sums.template level<Chain::taps_before(I)>();
    }
  }
  // The level whose grad_pre level l's adjoint reads: l + 1, or l itself at the last level (which reads none).
  static FF_HD int next_level(int l, int L) { return l + 1 < L ? l + 1 : l; }
  template <int I>
  static FF_HD auto next_level(LevelIndex<I>, int) {
    return LevelIndex<(I + 1 < Chain::kLevelCount ? I + 1 : I)>{};
  }
  // The host runs a phase's items in order, each loading its channel's taps; a GPU thread loads its own once.
  static FF_HD void load_item_taps(ThreadTaps& taps, const Params& p, const SweepBand& band, int c) {
#ifndef __CUDA_ARCH__
    taps.load(p.weights, band.c_begin + c, c < band.cn);
#endif
  }
  // Ring rows e .. e + N - 1 of a step's table (BwdRingIndex's groups: e a multiple of 4) as offsets of shared memory
  // at pixel 0 of channel 0 (an item adds its `at`): a 16-byte shared load per 4 rows.
  template <int N>
  struct RingRows {
    int row[N];
    FF_HD RingRows(const float* table, int e) {
      float v[(N + 3) / 4 * 4];
      load_run(table + kRingTable + e, v);
FF_UNROLL
      for (int i = 0; i < N; ++i) row[i] = int(float_to_bits(v[i]));
    }
    FF_HD int operator[](int i) const { return row[i]; }
  };
  static FF_HD int ring_row(const float* table, int e) { return int(float_to_bits(table[kRingTable + e])); }

  // ctx_local = sum_l (scale gates_l) z_{l+1} at the item's strip of row y = y_top + R (of the band), summed in level
  // order as context_fwd does (the gates ring holds the scaled gates, as context_fwd's): z_1 .. z_{L-1} from their
  // rings, z_L the last level's fresh strip.
  static FF_HD void store_local_context(const Params& p, const ContextBwdLayout& s, const SweepBand& band,
                                        const float* smem, const float* rows, const View& ctx_local, const Item& it,
                                        const float (&z_last)[S]) {
    const float* gates = smem + ring_row(rows, Index::kLocal) + s.gates().pad + it.x0;
    float acc[S] = {};
    Chain::template for_each_level<0, false>(p.levels, [&](auto l, auto) {
      float gate[S];
      load_run(gates + s.gates().channel(l), gate);
      const auto add = [&](const float(&z)[S]) {
FF_UNROLL
        for (int u = 0; u < S; ++u) acc[u] = fmaf(gate[u], z[u], acc[u]);
      };
      if_level(Chain::is_last(p.levels, l), [&] { add(z_last); }, [&] {
        float z[S];
        load_run(smem + ring_row(rows, Index::kLocal + 1 + l) + it.at, z);
        add(z);
      });
    });
    store_strip<T>(ctx_local, 0, 0, it.x0, band.c_begin + it.c, it.c < band.cn ? p.geo.W - it.x0 : 0, 1.f, acc);
  }

  template <int K, class Level>
  static FF_HD void recompute(const Params& p, const ContextBwdLayout& s, const SweepBand& band, float* smem,
                              ThreadTaps& taps, const float* rows, Level l, const Item& first) {
    const int W = p.geo.W;
    const StepRow row = step_row(rows, BwdRowPlan::recompute(l));
    const bool inside = row.inside;
    const RingRows<K + 2> ring(rows, Index::recompute(p.levels, l));  // z_l's K rows, z_{l+1}, gelu_grad_l
    float* out_row = smem + ring[K];
    float* dg_row = smem + ring[K + 1];
    FF_FOR_EACH_ITEM(it, first, s) {
      load_item_taps(taps, p, band, it.c);
      float z[S] = {}, dg[S] = {};
      if (inside) {
        float pre[S] = {};
        conv_strip<K, false>([&](int i) { return smem + ring[i] + it.at; },
                             level_taps(taps, smem, s, l, it.c), pre);
FF_UNROLL
        for (int u = 0; u < S; ++u) gelu_and_grad(pre[u], z[u], dg[u]);
        if (it.x0 + S > W) {  // columns past W stay zero (z_{l+1} is read with its padding; dg zeroes grad_pre)
FF_UNROLL
          for (int u = 0; u < S; ++u) {
            z[u] = it.x0 + u < W ? z[u] : 0.f;
            dg[u] = it.x0 + u < W ? dg[u] : 0.f;
          }
        }
        if_level(Chain::is_last(p.levels, l), [&] {
          if (row.owns) store_local_context(p, s, band, smem, rows, view_from<T>(p.ctx_local, row.offset), it, z);
        });
      }
      store_run(out_row + it.at, z);
      store_run(dg_row + it.at, dg);
    }
  }

  template <int K_next, class Level>
  static FF_HD void adjoint(const Params& p, const ContextBwdLayout& s, const SweepBand& band, float* smem,
                            ThreadTaps& taps, const float* rows, Level l, const Item& first) {
    const int W = p.geo.W, L = Chain::levels(p.levels);
    const StepRow row = step_row(rows, BwdRowPlan::adjoint(L, l));
    const bool inside = row.inside;
    const auto last = Chain::is_last(p.levels, l);
    const View grad_ctx_all_row = view_from<T>(p.grad_ctx_all, row.offset);
    const auto l_next = next_level(l, L);
    // grad_pre_{l+1}'s K_next rows (none read at the last level), gelu_grad_l, grad_pre_l, gates, z_{l+1}
    const RingRows<K_next + 4> ring(rows, Index::adjoint(p.levels, l));
    const float* dg_row = smem + ring[K_next];
    float* out_row = smem + ring[K_next + 1];
    const float* gate_run = smem + ring[K_next + 2] + s.gates().channel(l) + s.gates().pad;
    const float* z_row = smem + ring[K_next + 3];
    float* terms_row = smem + s.gate_terms + l * s.term_level;
    FF_FOR_EACH_ITEM(it, first, s) {
      load_item_taps(taps, p, band, it.c);
      float grad_pre[S] = {};  // zero past W, where dg is
      if (inside && it.c < band.cn) {
        const int64_t bc = band.c_begin + it.c;
        if_level(
            last,
            [&] {
              const float grad_mean =
                  static_cast<const float*>(p.grad_mean.ptr)[step_row(rows, BwdRowPlan::kGradMean).offset + bc];
FF_UNROLL
              for (int u = 0; u < S; ++u) grad_pre[u] = grad_mean;
            },
            [&] {
              conv_strip<K_next, true>([&](int i) { return smem + ring[i] + it.at; },
                                       level_taps(taps, smem, s, l_next, it.c), grad_pre);
            });
        float dg[S], gate[S], grad_ctx_all[S], term[S];
        load_run(dg_row + it.at, dg);
        load_strip<T>(grad_ctx_all_row, 0, 0, it.x0, bc, W - it.x0, grad_ctx_all);
        load_run(gate_run + it.x0, gate);
        load_run(z_row + it.at, term);
FF_UNROLL
        for (int u = 0; u < S; ++u) {
          grad_pre[u] = fmaf(gate[u], grad_ctx_all[u], grad_pre[u]) * dg[u];  // gate: scale * gates_l
          term[u] *= grad_ctx_all[u];  // the gate gradient's term: grad_ctx_all * z_{l+1}
        }
        float* terms = terms_row + (it.x0 >> 2) * s.term_block + 4 * it.c;  // x0 a multiple of 4: S / 4 blocks
        store_blocks(terms, s.term_block, term);
        if_level(last, [&] {  // the global level's: grad_ctx_all * G
          const float pooled = static_cast<const float*>(p.pooled.ptr)[step_row(rows, BwdRowPlan::kPooled).offset + bc];
FF_UNROLL
          for (int u = 0; u < S; ++u) term[u] = grad_ctx_all[u] * pooled;
          store_blocks(terms + s.term_level, s.term_block, term);
        });
      }
      store_run(out_row + it.at, grad_pre);
    }
  }

  // dw_l[i, j, c] += sum_u grad_pre_l[y, x0 + u] z_l[y + i - r, x0 + u + j - r] for every i, j < K into the thread's
  // sums of level l (sums(i * K + j)): ring z_l's rows y - r .. y + r, then grad_pre_l's row y. A window of each of
  // z_l's K rows and the strip of grad_pre_l in registers feed K^2 S FMAs.
  template <int K, class Sums>
  static FF_HD void weight_grad_strip(const float* smem, const RingRows<K + 1>& ring, const Item& it, const Sums& sums) {
    constexpr int r = K / 2, pad = ring_pad(K), n = S + 2 * pad;
    float grad[S];
    load_run(smem + ring[K] + it.at, grad);
FF_UNROLL
    for (int i = 0; i < K; ++i) {
      float window[n];
      load_run(smem + ring[i] + it.at - pad, window);
FF_UNROLL
      for (int j = 0; j < K; ++j) {
        float acc = sums(i * K + j);
FF_UNROLL
        for (int u = 0; u < S; ++u) acc = fmaf(grad[u], window[pad - r + u + j], acc);
        sums(i * K + j) = acc;
      }
    }
  }

  // grad_ctx of row y_top + 2R (`row`, in the band): the adjoint conv of level 0 on grad_pre_0's rows.
  template <int K0>
  static FF_HD void grad_ctx_row(const Params& p, const ContextBwdLayout& s, const SweepBand& band, float* smem,
                                 ThreadTaps& taps, const float* rows, const View& grad_ctx, const Item& first) {
    const RingRows<K0> ring(rows, Index::kGradCtx);
    FF_FOR_EACH_ITEM(it, first, s) {
      load_item_taps(taps, p, band, it.c);
      float grad[S] = {};
      conv_strip<K0, true>([&](int i) { return smem + ring[i] + it.at; },
                           level_taps(taps, smem, s, LevelIndex<0>{}, it.c), grad);
      store_strip<T>(grad_ctx, 0, 0, it.x0, band.c_begin + it.c, it.c < band.cn ? p.geo.W - it.x0 : 0, 1.f, grad);
    }
  }

  // Writes the table of the step whose lag-0 row is y_top, a thread an entry: from kRingTable on, BwdRingPlan's (a
  // ring row's offset of shared memory), before them BwdRowPlan's (4 floats an entry: flags, 0, and the offset's low
  // and high words). Two loops: a warp runs one kind of entry at a time.
  static FF_HD void decode_step_rows(const Args& args, const SweepBand& band, float* table, int y_top) {
    const BwdRingPlan& rings = args.rings;
    FF_FOR_EACH(e, rings.count) {
      const RowRing& r = args.s.ring[rings.ring(e)];
      table[kRingTable + e] = bits_to_float(uint32_t(r.offset(r.slot(y_top + rings.lag(e)))));
    }
    const BwdRowPlan& plan = args.rows;
    FF_FOR_EACH(e, plan.count) {
      const SweepRow row = band.row<kStacked>(y_top + plan.lag[e]);
      const uint64_t offset = uint64_t(int64_t(row.b) * plan.sb[e] + int64_t(row.y) * plan.sy[e]);
      const float entry[4] = {bits_to_float(uint32_t(row.inside) | uint32_t(band.owns(row)) << 1), 0.f,
                              bits_to_float(uint32_t(offset)), bits_to_float(uint32_t(offset >> 32))};
      store_run(table + 4 * e, entry);
    }
  }
  static FF_HD StepRow step_row(const float* table, int e) {
    float entry[4];
    load_run(table + 4 * e, entry);
    const uint32_t flags = float_to_bits(entry[0]);
    return {(flags & 1u) != 0, (flags & 2u) != 0,
            int64_t(uint64_t(float_to_bits(entry[3])) << 32 | uint64_t(float_to_bits(entry[2])))};
  }

  // v[0 .. 3] to the 4 floats at dst, v[4 .. 7] to those at dst + block, ...: a strip's gate terms, a 16-byte store
  // a block of 4 pixels. On the GPU an explicit st.shared.v4: nvcc splits these float4 stores into scalar ones (it
  // keeps store_run's elsewhere); no memory clobber, as the terms are read only after the phase's barrier.
  static FF_HD void store_blocks(float* dst, int block, const float (&v)[S]) {
FF_UNROLL
    for (int q = 0; q < S / 4; ++q) {
#ifdef __CUDA_ARCH__
      const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(dst + q * block));
      asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(at), "f"(v[4 * q]), "f"(v[4 * q + 1]),
                   "f"(v[4 * q + 2]), "f"(v[4 * q + 3]));
#else
      for (int u = 0; u < 4; ++u) dst[q * block + u] = v[4 * q + u];
#endif
    }
  }

  // sum_{c < n} v[4 c] in channel order, 8 channels an iteration (n <= chunk rounded up to 8; zero past n).
  static FF_HD float channel_sum(const float* v, int n) {
    float sum = 0.f;
FF_NO_UNROLL
    for (int c = 0; c < n; c += 8) {
FF_UNROLL
      for (int i = 0; i < 8; ++i) sum += v[4 * (c + i)];
    }
    return sum;
  }

  // Per pixel u < kStrip of a strip (kStrip / 4 blocks, block_stride apart): the sum of kGroup channels' terms in
  // channel order (v: the first channel's). A channel's 4 pixels of a block are one 16-byte shared load.
  static FF_HD void group_sums(const float* v, int block_stride, float (&sum)[kStrip]) {
FF_UNROLL
    for (int c = 0; c < kGroup; ++c) {
FF_UNROLL
      for (int q = 0; q < kStrip / 4; ++q) {
        float term[4];
        load_run(v + q * block_stride + 4 * c, term);
FF_UNROLL
        for (int u = 0; u < 4; ++u) sum[4 * q + u] = c == 0 ? term[u] : sum[4 * q + u] + term[u];
      }
    }
  }

  // The gate partials of the band's rows: per column x and level l <= L, the sum of level l's gate_terms over a
  // partial's channels in channel order (channels past cn are zero), at the row of level min(l, L - 1)'s adjoint
  // (the global level's terms are written with level L - 1's), in gate_partial's column of those channels
  // (columns: gate_partial_columns). Items:
  //   one-image bands  an item per (strip of kStrip columns, group of kGroup channels, level), level fastest, then
  //                    strip (padded to 1 << gate_strip_shift: a compile-time modulo and shifts where the chain is
  //                    fixed), then group: kGroup x (kStrip / 4 16-byte shared loads and kStrip adds), at 64
  //                    threads one warp pass a step at FocalNet-T stages 1-3
  //   stacks           (small maps) an item per (column, level < L), level fastest, summing the chunk's channels
  //                    (the item of level L - 1 the global level's too): a shared load and an add a channel (strip
  //                    items measured 0.1 to 0.8 an element more there: docs/design.md section 8 item 11)
  static FF_HD void gate_partials(const Params& p, const ContextBwdLayout& s, const SweepBand& band, const float* smem,
                                  const float* rows, int columns) {
    const int W = p.geo.W, cn = band.cn, L = Chain::levels(p.levels), pixel = (L + 1) * columns;
    if constexpr (kStacked) {
      FF_FOR_EACH(item, L * W) {
        const int x = item / L, l = item - x * L;
        const StepRow row = step_row(rows, BwdRowPlan::partial(L, l));
        if (row.owns) {
          const float* terms = smem + s.gate_terms + l * s.term_level + (x >> 2) * s.term_block + (x & 3);
          float* out = p.gate_partial + row.offset + int64_t(x) * pixel + band.chunk_index;
          out[l * columns] = p.scale * channel_sum(terms, cn);
          if (l == L - 1) out[L * columns] = p.scale * channel_sum(terms + s.term_level, cn);
        }
      }
    } else {
      const int strip_shift = s.gate_strip_shift, strips = strip_width(W) / kStrip;
      FF_FOR_EACH(item, ((L + 1) << strip_shift) * ((cn + kGroup - 1) / kGroup)) {
        const int pair = item / (L + 1), l = item - pair * (L + 1);
        const int strip = pair & ((1 << strip_shift) - 1), g = pair >> strip_shift, x0 = kStrip * strip;
        const StepRow row = step_row(rows, BwdRowPlan::partial(L, min_int(l, L - 1)));
        if (row.owns && strip < strips) {
          float sum[kStrip];
          group_sums(smem + s.gate_terms + l * s.term_level + x0 / 4 * s.term_block + 4 * kGroup * g, s.term_block,
                     sum);
          float* out = p.gate_partial + row.offset + int64_t(x0) * pixel + l * columns + band.c_begin / kGroup + g;
          const int valid = W - x0;
FF_UNROLL
          for (int u = 0; u < kStrip; ++u) sum[u] *= p.scale;  // not under the stores' predicates: one FMUL each
FF_UNROLL
          for (int u = 0; u < kStrip; ++u, out += pixel) {
            if (u < valid) *out = sum[u];
          }
        }
      }
    }
  }

  static FF_HD void run(const Args& args, int block, float* smem) {
    const Params& p = args.p;
    const ContextBwdLayout& s = args.s;
    const Geometry& geo = p.geo;
    const SweepLevels& lv = p.levels;
    const int chunk = p.chunk;
    const int gate_columns = kStacked ? int(ceil_div(geo.C, chunk)) : geo.groups();  // gate_partial_columns
    const int H = geo.H, W = geo.W, L = Chain::levels(lv), R = lv.offset(L), taps = lv.taps_before(L);
    const SweepBand band(block, geo, p.band_rows, p.stack, lv.largest_radius(), chunk);
    const int c_begin = band.c_begin, cn = band.cn;
    const int y_start = (band.images - 1) * band.period + min_int(H - 1, band.y1 - 1 + 2 * R);  // a band row
    const int strips = s.strips;
    const View gate_view = gates_as_view(p.gates);

    // The weights as TapRows (zero past cn) unless the threads hold their taps, everything after them zero
    // (16-byte stores; regions are 4-float aligned). A tap's offset in the weights and in weight_partial
    // is 32-bit (context_bwd checks taps x its tap stride).
    if constexpr (kRegisterTaps == 0) s.taps.fill(smem + s.weights, lv, p.weights, c_begin, cn, s.chunk_shift);
    FF_FOR_EACH(i, (s.total - s.sums) / 4) {
      const float zero[4] = {};
      store_run(smem + s.sums + 4 * i, zero);
    }
    ThreadTaps thread_taps;
    ThreadSums thread_sums;
#ifdef __CUDA_ARCH__
    const int thread_channel = int(threadIdx.x) & (chunk - 1);
    thread_taps.load(p.weights, c_begin + thread_channel, thread_channel < cn);
    float* const sum_columns = smem + s.sums;
#else
    std::vector<float> host_sums(size_t(taps) * size_t(s.threads));
    float* const sum_columns = host_sums.data();
#endif
    float* const step_tables = smem + s.step_rows;
    decode_step_rows(args, band, step_tables, y_start);  // step 0's rows
    FF_BARRIER();

    static_assert(kMaxFocalLevel <= kGroup, "the load phase's gate items are among its ctx items (L <= chunk)");
    const Item first = first_item(s);
    for (int t = 0; t <= y_start - band.y0 + 2 * R; ++t) {
      const int y_top = y_start - t;  // the band row at lag 0
      const float* rows = step_tables + (t & 1) * s.step_table;
      const StepRow top = step_row(rows, BwdRowPlan::kCtx);
      const View ctx_row = view_from<T>(p.ctx, top.offset);
      const View gate_row = view_from<T>(gate_view, step_row(rows, BwdRowPlan::kGates).offset);
      const RingRows<2> ring(rows, Index::kLoad);  // z_0, gates
      float* z0_row = smem + ring[0];
      float* gates_row = smem + ring[1] + s.gates().pad;
      decode_step_rows(args, band, step_tables + ((t + 1) & 1) * s.step_table, y_top - 1);  // the next step's
      // One pass: an item loads a ctx strip and, for the first L * strips items, a gate strip too (one loop's
      // overhead a step).
      FF_FOR_EACH_ITEM(it, first, s) {
        load_ctx_strip<T, S>(ctx_row, z0_row + it.at, it.c, it.x0, top.inside, W, c_begin, cn);
        if (it.item < L * strips && top.inside) {  // rows outside the images: nothing reads their gates
          const int strip = it.item / L, l = it.item - strip * L, x0 = strip * S;
          float gate[S];
          load_strip<T>(gate_row, 0, 0, x0, l * p.gates.sl, W - x0, gate);
FF_UNROLL
          for (int u = 0; u < S; ++u) gate[u] *= p.scale;  // the ring holds scale * gates, as context_fwd's
          store_run(gates_row + s.gates().channel(l) + x0, gate);
        }
      }
      FF_BARRIER();

      Chain::template for_each_level<0, false>(lv, [&](auto l, auto k) {
        recompute<decltype(k)::value>(p, s, band, smem, thread_taps, rows, l, first);
        FF_BARRIER();
      });
      Chain::template for_each_level<1, true>(lv, [&](auto l, auto k_next) {
        adjoint<decltype(k_next)::value>(p, s, band, smem, thread_taps, rows, l, first);
        FF_BARRIER();
      });

      // Reduce (one phase): grad_ctx, the weight gradients (an item per strip and channel), the gate partials of the
      // rows in the band.
      const StepRow out_row = step_row(rows, BwdRowPlan::kGradCtx);
      if (out_row.owns) {
        Chain::with_first_size(lv, [&](auto k0) {
          grad_ctx_row<decltype(k0)::value>(p, s, band, smem, thread_taps, rows, view_from<T>(p.grad_ctx, out_row.offset),
                                            first);
        });
      }
      Chain::template for_each_level<0, false>(lv, [&](auto l, auto k) {
        constexpr int K = decltype(k)::value;
        if (step_row(rows, BwdRowPlan::adjoint(L, l)).owns) {
          const RingRows<K + 1> ring(rows, Index::weight_grad(lv, l));  // z_l's K rows, grad_pre_l
          FF_FOR_EACH_ITEM(it, first, s) {
            weight_grad_strip<K>(smem, ring, it, level_sums(thread_sums, sum_columns, s, l, it.item));
          }
        }
      });
      gate_partials(p, s, band, smem, rows, gate_columns);
      FF_BARRIER();
    }

    // The weight gradients: per channel, the sums of its threads in thread order. Register sums first meet in
    // [taps][threads] at offset 0 (the rings are done).
    const float* columns = sum_columns;
    if constexpr (!std::is_same_v<ThreadSums, NoThreadSums>) {
#ifdef __CUDA_ARCH__
      thread_sums.store(smem + threadIdx.x, s.threads);
#endif
      columns = smem;
      FF_BARRIER();
    }
    float* const partial =
        static_cast<float*>(p.weight_partial.ptr) + p.weight_partial.at(band.partial_row(), 0, 0) + c_begin;
    const int partial_tap = int(p.weight_partial.sy);
    FF_FOR_EACH(item, taps * chunk) {
      const int tap = item >> s.chunk_shift, c = item & (chunk - 1);
      if (c < cn) {
        const float* column = columns + tap * s.threads + c;
        float sum = 0.f;
FF_NO_UNROLL
        for (int t = 0; t < s.threads; t += chunk) sum += column[t];
        partial[tap * partial_tap + c] = sum;
      }
    }
  }
};

// A thread: one channel group of one column of a band of rows (column_task), walking down the rows.
//   grad_modulator = grad_out * q
//   partial[b, band * W + x] = (sum grad_modulator, sum gates_L * grad_modulator) over the thread's pixels
// (grad_q = grad_out * modulator is output_fwd's, once the sweep has given ctx_local.) G: grad_out's access, Q: q's,
// R: grad_modulator's (output_bwd chooses them).
template <typename T, Access G, Access Q, Access R>
struct OutputBwd {
  using Params = OutputBwdParams;
  static constexpr const char* kName = "output_bwd";

  struct Cursors {
    RowCursor<const T> grad_out, q, gate;
    RowCursor<T> grad_modulator;
    FF_HD void next() {
      grad_out.next();
      q.next();
      gate.next();
      grad_modulator.next();
    }
  };

  static FF_HD void row(Cursors& c, int n, Group& sum, Group& gated_sum) {
    const Group grad_out = load_channels<G>(c.grad_out.p, n), q = load_channels<Q>(c.q.p, n);
    const float gate = to_float(*c.gate.p);
    Group grad_modulator;
FF_UNROLL
    for (int e = 0; e < kGroup; ++e) {
      grad_modulator.v[e] = grad_out.v[e] * q.v[e];
      sum.v[e] += grad_modulator.v[e];
      gated_sum.v[e] = fmaf(gate, grad_modulator.v[e], gated_sum.v[e]);
    }
    store_channels<R>(c.grad_modulator.p, n, grad_modulator);
    c.next();
  }

  static FF_HD void run(const Params& p, const GridThread& thread) {
    const ColumnTask task = column_task(thread, p.geo, p.rows);
    Cursors c{row_cursor<const T>(p.grad_out, task), row_cursor<const T>(p.q, task),
              gate_cursor<T>(p.gates, task, p.gates.L), row_cursor<T>(p.grad_modulator, task)};
    Group sum = {}, gated_sum = {};
FF_NO_UNROLL
    for (int y = task.y0; y < task.y1; ++y) row(c, task.n, sum, gated_sum);
    float* partial = static_cast<float*>(p.partial.ptr) + p.partial.at(task.b, thread.band * p.geo.W + task.x, 0);
    store_group(partial + task.c0, task.n, p.partial.aligned, sum);
    store_group(partial + p.partial.sx + task.c0, task.n, p.partial.aligned, gated_sum);
  }
};

// A thread: one channel group of one pixel of level l (see ConvLevelBwdParams).
template <typename T, typename Z>
struct ConvLevelBwd {
  using Params = ConvLevelBwdParams;
  static constexpr const char* kName = "conv_level_bwd";

  static FF_HD void run(const Params& p, const GridThread& thread) {
    const Geometry& geo = p.geo;
    const PixelTask task = pixel_task(thread, geo);
    const int b = task.b, y = task.y, x = task.x, c0 = task.c0, n = task.n;
    const Group grad_ctx_all = load_at<T>(p.grad_ctx_all, b, y, x, c0, n);

    // dz_{l+1}: through the gated sum, and through the global level or the next level's conv.
    Group dz = p.grad_mean.ptr ? load_at<float>(p.grad_mean, b, 0, 0, c0, n)
                               : depthwise_conv_adjoint(p.grad_pre_next, p.weight_next, p.k_next, geo, b, y,
                                                        x, c0, n);
    const float gate = p.scale * load_gate<T>(p.gates, b, y, x, p.level);
FF_UNROLL
    for (int e = 0; e < kGroup; ++e) dz.v[e] = fmaf(gate, grad_ctx_all.v[e], dz.v[e]);

    // Recompute pre_l and z_{l+1} = GELU(pre_l) at this pixel.
    const Group pre = depthwise_conv<Z>(p.z_in, p.weight, p.k, geo, b, y, x, c0, n);
    Group grad_pre;
    float grad_gate = 0.f;
FF_UNROLL
    for (int e = 0; e < kGroup; ++e) {
      float z, dg;
      gelu_and_grad(pre.v[e], z, dg);
      grad_pre.v[e] = dz.v[e] * dg;
      grad_gate = fmaf(grad_ctx_all.v[e], z, grad_gate);
    }
    store_at<float>(p.grad_pre, b, y, x, c0, n, grad_pre);

    const int levels = p.gates.L + 1;
    float* gate_partial = p.gate_partial + task.pixel * levels * geo.groups() + task.group;
    gate_partial[p.level * geo.groups()] = p.scale * grad_gate;
    if (p.pooled.ptr) {  // the global level's gate: scale * sum_c grad_ctx_all * G
      const Group pooled = load_at<float>(p.pooled, b, 0, 0, c0, n);
      float grad_global_gate = 0.f;
FF_UNROLL
      for (int e = 0; e < kGroup; ++e) grad_global_gate = fmaf(grad_ctx_all.v[e], pooled.v[e], grad_global_gate);
      gate_partial[p.gates.L * geo.groups()] = p.scale * grad_global_gate;
    }
  }
};

// A thread: one kernel row i and one channel group of a strip of `rows` image rows (grid: items (i, group),
// bands the row strips, images); K accumulators
// of 8 channels, one per kernel column j, held in registers (K is a template parameter).
template <typename Z, int K>
struct WeightGrad {
  using Params = WeightGradParams;
  static constexpr const char* kName = "weight_grad";

  static FF_HD void run(const Params& p, const GridThread& thread) {
    const Geometry& geo = p.geo;
    constexpr int r = K / 2;
    const int groups = geo.groups(), i = thread.item / groups, b = thread.image, strip = thread.band;
    const int c0 = (thread.item - i * groups) * kGroup, n = min_int(kGroup, geo.C - c0);
    const int64_t row_strips = ceil_div(geo.H, p.rows);

    Group acc[K] = {};
    const int y_begin = strip * p.rows, y_end = y_begin + min_int(p.rows, geo.H - y_begin);
    for (int y = y_begin; y < y_end; ++y) {
      const int yy = y + i - r;
      if (yy < 0 || yy >= geo.H) continue;
      for (int x = 0; x < geo.W; ++x) {
        const Group grad_pre = load_at<float>(p.grad_pre, b, y, x, c0, n);
FF_UNROLL
        for (int j = 0; j < K; ++j) {
          const int xx = x + j - r;
          if (xx < 0 || xx >= geo.W) continue;
          const Group z = load_at<Z>(p.z_in, b, yy, xx, c0, n);
FF_UNROLL
          for (int e = 0; e < kGroup; ++e) acc[j].v[e] = fmaf(grad_pre.v[e], z.v[e], acc[j].v[e]);
        }
      }
    }
FF_UNROLL
    for (int j = 0; j < K; ++j) store_at<float>(p.partial, b * row_strips + strip, i, j, c0, n, acc[j]);
  }
};

// A thread: one channel group of one pixel. grad_in = conv_adjoint(grad_pre), stored in T.
template <typename T>
struct ConvAdjoint {
  using Params = ConvAdjointParams;
  static constexpr const char* kName = "conv_adjoint";

  static FF_HD void run(const Params& p, const GridThread& thread) {
    const PixelTask task = pixel_task(thread, p.geo);
    const Group grad_in =
        depthwise_conv_adjoint(p.grad_pre, p.weight, p.k, p.geo, task.b, task.y, task.x, task.c0, task.n);
    store_at<T>(p.grad_in, task.b, task.y, task.x, task.c0, task.n, grad_in);
  }
};

// Calls f(std::integral_constant<int, K>{}) for an odd kernel size K <= kMaxKernelSize.
template <class F>
void dispatch_kernel_size(int k, F&& f) {
  switch (k) {
    case 1: f(std::integral_constant<int, 1>{}); return;
    case 3: f(std::integral_constant<int, 3>{}); return;
    case 5: f(std::integral_constant<int, 5>{}); return;
    case 7: f(std::integral_constant<int, 7>{}); return;
    case 9: f(std::integral_constant<int, 9>{}); return;
    case 11: f(std::integral_constant<int, 11>{}); return;
    case 13: f(std::integral_constant<int, 13>{}); return;
  }
  throw std::invalid_argument("focalfast weight_grad: kernel size must be odd and at most 13, got " +
                              std::to_string(k));
}

}  // namespace

// The layout of a Chain's blocks: taps and sums in shared memory unless its threads hold them in registers.
template <class Chain>
ContextBwdLayout context_bwd_layout(const SweepLevels& levels, int W, int chunk, int strip) {
  return ContextBwdLayout(levels, W, chunk, strip, kBwdRegisterTaps<Chain> == 0, kBwdRegisterSums<Chain> == 0);
}

int64_t context_bwd_smem_bytes(const SweepLevels& levels, int W, int chunk, int strip) {
  int64_t bytes = 0;
  dispatch_chain(levels, [&](auto chain) {
    const ContextBwdLayout layout = context_bwd_layout<decltype(chain)>(levels, W, chunk, strip);
    bytes = layout.runs() ? int64_t(layout.total) * int64_t(sizeof(float)) : std::numeric_limits<int64_t>::max();
  });
  return bytes;
}

void context_bwd(const ContextBwdParams& p, int strip, const Stream& stream) {
  const int64_t taps = p.levels.taps_before(p.levels.L);  // a tap's offset is 32-bit (ContextBwd::run)
  if (taps * p.weights.sb >= (int64_t(1) << 31) || taps * p.weight_partial.sy >= (int64_t(1) << 31)) {
    throw std::invalid_argument("focalfast context_bwd: taps x channels must be under 2^31, got " +
                                std::to_string(taps) + " taps of " + std::to_string(p.weights.sb) + " channels");
  }
  const int blocks = int(sweep_band_count(p.geo, p.band_rows, p.stack) * ceil_div(p.geo.C, p.chunk));
  dispatch_chain(p.levels, [&](auto chain) {
    using Chain = decltype(chain);
    const ContextBwdLayout layout = context_bwd_layout<Chain>(p.levels, p.geo.W, p.chunk, strip);
    if (!layout.runs()) {
      throw std::invalid_argument("focalfast context_bwd: a block runs at most " + std::to_string(kSweepThreads) +
                                  " conv items (strips x chunk), got " + std::to_string(layout.items) +
                                  ": context_bwd_smem_bytes says which schedules run");
    }
    dispatch_dtype(p.dtype, [&](auto t_tag) {
      dispatch_bwd_strip(strip_width(p.geo.W) / layout.strips, [&](auto strip) {
        dispatch_bool(p.stack > 1, [&](auto stacked) {
          launch_sweep<ContextBwd<decltype(t_tag), Chain, decltype(strip)::value, decltype(stacked)::value>>(
              {p, layout, BwdRowPlan(p, layout), BwdRingPlan(p, layout)}, blocks, layout.threads,
              int64_t(layout.total) * int64_t(sizeof(float)), stream);
        });
      });
    });
  });
}

// An aligned grad_modulator (C % 8 == 0: every thread's group is whole) takes vector stores, and grad_out and q
// vector loads where each is aligned (q is not where it is a view of f's output); else bounded scalars.
void output_bwd(const OutputBwdParams& p, const Stream& stream) {
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    const auto launch = [&](auto g, auto q, auto r) {
      launch_grid<OutputBwd<T, decltype(g)::value, decltype(q)::value, decltype(r)::value>>(
          p, column_grid(p.geo, p.rows), stream);
    };
    using V = AccessTag<Access::kVector>;
    using S = AccessTag<Access::kScalar>;
    using B = AccessTag<Access::kBounded>;
    if (!p.grad_modulator.aligned) {
      launch(B{}, B{}, B{});
    } else if (p.grad_out.aligned && p.q.aligned) {
      launch(V{}, V{}, V{});
    } else if (p.grad_out.aligned) {
      launch(V{}, S{}, V{});
    } else {
      launch(S{}, S{}, V{});
    }
  });
}

void conv_level_bwd(const ConvLevelBwdParams& p, const Stream& stream) {
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    dispatch_level_input<T>(p.z_in_fp32, [&](auto z_tag) {
      using Z = decltype(z_tag);
      launch_grid<ConvLevelBwd<T, Z>>(p, pixel_grid(p.geo), stream);
    });
  });
}

void weight_grad(const WeightGradParams& p, const Stream& stream) {
  const GridShape grid = grid_shape(int64_t(p.k) * p.geo.groups(), ceil_div(p.geo.H, p.rows), p.geo.B);
  dispatch_dtype(p.z_dtype, [&](auto z_tag) {
    using Z = decltype(z_tag);
    dispatch_kernel_size(p.k, [&](auto k_tag) {
      constexpr int K = decltype(k_tag)::value;
      launch_grid<WeightGrad<Z, K>>(p, grid, stream);
    });
  });
}

void conv_adjoint(const ConvAdjointParams& p, const Stream& stream) {
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    launch_grid<ConvAdjoint<T>>(p, pixel_grid(p.geo), stream);
  });
}

}  // namespace focalfast
