// Forward kernels: the fused row-streaming sweep over all focal levels (context_fwd), the level-at-a-time
// fallback for images too wide for its shared memory (conv_level_fwd), the epilogue of the h GEMM (rank-1
// global term, q *), and the split reduction that turns every per-strip fp32 partial into a sum in
// a fixed order (no atomics: deterministic).
#include "focal_modulation_sweep.cuh"

namespace focalfast {
namespace {

// Output rows of every level per sweep step: each window row a conv item loads feeds both rows' FMAs, and the
// per-row set-up (slots, addresses, item decomposition, barriers) is paid once per kRowsPerStep rows.
constexpr int kRowsPerStep = 2;

// Widest rows (in strips) that context_fwd sweeps as narrow (ContextFwdLayout::narrow; 14x14 and 7x7 maps): their
// gates load a value an item, not a strip of both rows an item, and an item whose strip passes W (every item at 7x7)
// takes the unrolled rows with its columns tested, not the loop of tested rows. Measured (static cost, bf16 views,
// FocalNet-T, warp-instructions an element): gates by value, stage 4 srf / lrf 6.15 / 8.74 -> 5.64 / 8.14 and stage
// 3 5.06 / 7.72 -> 4.94 / 7.68; stage 2 srf (4 strips) 4.33 -> 4.37 and stage 1 srf (7 strips) 3.45 -> 3.53, where
// strip items fill a warp. Column tests in the unrolled rows of wide rows cost stage 1 srf / lrf 3.45 / 6.70 -> 3.77 /
// 7.39 (ptxas predicates them: every item pays them), where only a row's last strip can pass W.
constexpr int kNarrowStrips = 2;
static_assert(kRowsPerStep == 2, "a gate item by value holds its row in one bit");

// Shared memory of context_fwd (fp32): the block's weights, a row of weight_pitch (odd: the lanes' channels hit
// distinct banks) per channel, the levels' taps concatenated (only those not in registers are loaded: see
// ThreadTapsOf); a ring of the last R + kRowsPerStep rows of gates [L][strip_width(W)]; per level input z_l a
// ring of k_l + kRowsPerStep - 1 rows (RowRing, padded by ring_pad(k_l)), deep enough for l >= 1 to still hold
// the rows the last level outputs (R - o_l + kRowsPerStep: the last level gates them, see ContextFwd); per-item
// pooling sums; the rings' slot tables. Everything from `zeroed` to `tables` starts as zeros.
struct ContextFwdLayout {
  int weights = 0, weight_pitch = 0, zeroed = 0, pool = 0, tables = 0, total = 0, width = 0, chunk_shift = 0;
  int strip_items = 0;  // a row's (strip, channel) items: width / kStrip * chunk (zero_rows)
  int ctx_items = 0;    // the ctx load's (strip, 4 channels) items: strip_items / 4
  // The levels' items: (strip, channel), and where strip_items is not a whole number of warps (an odd number of
  // strips with 16 channels: stage 1 lrf, 7 strips, 112 items) the row's last strips split in halves of
  // kStrip / 2 pixels until it is (8 strips, 128 items): the warp that had half its lanes idle runs half strips
  // (ContextFwd's kMixed). Items [0, wide_items) are whole strips, the rest half strips from column half_x0 on.
  bool mixed = false;
  int items = 0, wide_items = 0, half_x0 = 0;
  // Narrow rows (at most kNarrowStrips strips). The gate load's items, decoded by shifts: by value where narrow
  // (items of whole strips would leave most of a warp idle): item = (x << (gate_shift + 1)) | (v << gate_shift) | l,
  // 2^gate_shift >= L; else by strip of both rows: item = (l << gate_shift) | strip, 2^gate_shift >= width / kStrip.
  bool narrow = false;
  int gate_shift = 0, gate_items = 0;
  int lag[kMaxFocalLevel] = {};        // o_{l+1}: level l's output row trails the ctx row by this much
  int level_taps[kMaxFocalLevel] = {};  // level l's tap 0 in a channel's weight row
  TabledRing gates;  // a "channel" per level
  TabledRing z[kMaxFocalLevel + 1];  // z[L] unused: the last level's output goes out

  // fixed_chain: the sweep runs a FixedChain. Narrow rows and half strips are FixedChain variants only (a
  // GenericChain's code is a copy per kernel size, and each variant of it would add more to the build than all
  // FixedChains together): a GenericChain sweeps whole strips and loads its gates by strip.
  ContextFwdLayout(const SweepLevels& lv, int W, int chunk, bool fixed_chain) {
    SmemAllocator a;
    width = strip_width(W);
    while ((1 << chunk_shift) < chunk) ++chunk_shift;
    narrow = fixed_chain && width / kStrip <= kNarrowStrips;
    if (narrow) {
      while ((1 << gate_shift) < lv.L) ++gate_shift;
      gate_items = width << (gate_shift + 1);
    } else {
      while ((1 << gate_shift) * kStrip < width) ++gate_shift;
      gate_items = lv.L << gate_shift;
    }
    const int strips = width / kStrip;
    strip_items = strips * chunk;
    ctx_items = strip_items / 4;
    // The fewest strips to halve for a whole number of warps, at most all but one; none where that does not reach it.
    int splits = 0;
    while (fixed_chain && !narrow && splits < strips - 1 && (strips + splits) * chunk % 32 != 0) ++splits;
    if ((strips + splits) * chunk % 32 != 0) splits = 0;
    mixed = splits > 0;
    wide_items = (strips - splits) * chunk;
    items = (strips + splits) * chunk;
    half_x0 = (strips - splits) * kStrip;
    weight_pitch = lv.taps() | 1;
    weights = int(a.take(int64_t(weight_pitch) * chunk));
    zeroed = int(a.used);
    gates = tabled_ring(a, lv.offset(lv.L) + kRowsPerStep, W, lv.L, 0);
    for (int l = 0; l < lv.L; ++l) {
      const int held = l == 0 ? 0 : lv.offset(lv.L) - lv.offset(l) + kRowsPerStep;
      z[l] = tabled_ring(a, max_int(lv.k[l] + kRowsPerStep - 1, held), W, chunk, ring_pad(lv.k[l]));
      lag[l] = lv.offset(l + 1);
      level_taps[l] = lv.taps_before(l);
    }
    pool = int(a.take(items));
    tables = int(a.used);
    add_slot_table(a, gates);
    for (int l = 0; l < lv.L; ++l) add_slot_table(a, z[l]);
    total = int(a.used);
  }
};

// The taps a thread keeps in registers for its channel: a FixedChain's first kLevels levels, none for a
// GenericChain; the other levels read the channel's weight row in shared memory. As many as fit without a
// spill on sm_80 and sm_90 (ptxas -v): L <= 2 all (FocalNet srf: 34 taps), L = 3 the first level's 9 (lrf:
// with 34 ptxas spills to reach its 80-register target), L = 4 none.
template <class Chain>
struct ThreadTapsOf {
  using type = NoThreadTaps;
  static constexpr int kLevels = 0;
};
template <int K0, int kChainLevels>
struct ThreadTapsOf<FixedChain<K0, kChainLevels>> {
  static constexpr int kLevels = kChainLevels <= 2 ? kChainLevels : kChainLevels == 3 ? 1 : 0;
  using type = std::conditional_t<kLevels == 0, NoThreadTaps,
                                  RegisterTaps<FixedChain<K0, kChainLevels>::taps_before(kLevels)>>;
};

// rows[v] for a run-time row v < kRowsPerStep of a step, as selects: the rows stay in registers. The rows of an
// item at the image's or band's edge run as a real loop (FF_NO_UNROLL, one copy of the body): the static cost
// report counts the branches of such a row by the loop's host-path counts.
template <int S>
FF_HD void pick_row(const float (&rows)[kRowsPerStep][S], int v, float (&out)[S]) {
FF_UNROLL
  for (int u = 0; u < S; ++u) out[u] = rows[0][u];
FF_UNROLL
  for (int w = 1; w < kRowsPerStep; ++w) {
FF_UNROLL
    for (int u = 0; u < S; ++u) out[u] = v == w ? rows[w][u] : out[u];
  }
}

// The depthwise conv of one channel at one strip of S pixels (kStrip or a half strip) of kRowsPerStep consecutive
// output rows y, y + 1, ...:
// acc[v][p] += sum_{i,j < K} w[i, j] z[y + v + i - r, x0 + p + j - r], r = K / 2. z's rows y - r .. y + r +
// kRowsPerStep - 1 are in the ring's slots slot0, slot0 + 1, ... (its slot table's entries); chan = ring.channel(c).
// Each of the K + kRowsPerStep - 1 window rows and each kernel row is loaded once and feeds every output row it
// touches. centre[v] = z[y + v, x0 .. x0 + S - 1] (the windows' centre columns: the input itself).
template <int K, int S, class Taps>
FF_HD void conv_rows(const float* smem, const TabledRing& ring, int slot0, int chan, int x0, const Taps& taps,
                     float (&acc)[kRowsPerStep][S], float (&centre)[kRowsPerStep][S]) {
  constexpr int r = K / 2, pad = ring_pad(K), n = S + 2 * pad;
  float w[kRowsPerStep][tap_row_width(K)] = {};  // at window row i, w[v] is kernel row i - v (loaded at row i - v)
FF_UNROLL
  for (int i = 0; i < K + kRowsPerStep - 1; ++i) {
    float window[n];
    load_run(smem + ring.table_offset(smem, slot0 + i) + chan + x0, window);
FF_UNROLL
    for (int v = kRowsPerStep - 1; v > 0; --v) {
FF_UNROLL
      for (int j = 0; j < tap_row_width(K); ++j) w[v][j] = w[v - 1][j];
    }
    if (i < K) taps.template row<K>(i, w[0]);
FF_UNROLL
    for (int v = 0; v < kRowsPerStep; ++v) {
      if (i - v == r) {
FF_UNROLL
        for (int p = 0; p < S; ++p) centre[v][p] = window[pad + p];
      }
      if (i - v < 0 || i - v >= K) continue;
FF_UNROLL
      for (int j = 0; j < K; ++j) {
        const float wv = w[v][j];
FF_UNROLL
        for (int p = 0; p < S; ++p) acc[v][p] = fmaf(wv, window[pad - r + p + j], acc[v][p]);
      }
    }
  }
}

// Element (b, y, 0, 0) of t: a row's start, formed once per step; items and pixels step on from it by strides.
template <typename T>
FF_HD T* row_start(const View& t, int b, int y) {
  return const_cast<T*>(static_cast<const T*>(t.ptr)) + t.at(b, y, 0);
}

// v[u] = in[u * sx] for u < min(valid, kStrip), else 0: one channel of a strip (a pointer step and a load a value).
template <typename T>
FF_HD void load_pixels(const T* in, int64_t sx, int valid, float (&v)[kStrip]) {
  if (valid >= kStrip) {
FF_UNROLL
    for (int u = 0; u < kStrip; ++u, in += sx) v[u] = to_float(*in);
  } else {
FF_UNROLL
    for (int u = 0; u < kStrip; ++u, in += sx) v[u] = u < valid ? to_float(*in) : 0.f;
  }
}

// v[e][u] = in[u * sx + e] for u < min(valid, kStrip) and e < min(channels, 4), else 0: 4 channels of a strip (a
// pointer step and 4 loads at constant offsets a pixel).
template <typename T>
FF_HD void load_quad(const T* in, int64_t sx, int valid, int channels, float (&v)[4][kStrip]) {
  if (valid >= kStrip && channels >= 4) {
FF_UNROLL
    for (int u = 0; u < kStrip; ++u, in += sx) {
FF_UNROLL
      for (int e = 0; e < 4; ++e) v[e][u] = to_float(in[e]);
    }
  } else {
FF_UNROLL
    for (int u = 0; u < kStrip; ++u, in += sx) {
FF_UNROLL
      for (int e = 0; e < 4; ++e) v[e][u] = u < valid && e < channels ? to_float(in[e]) : 0.f;
    }
  }
}

// out[u * sx] = v[u] for u < S.
template <typename T, int S>
FF_HD void store_whole_strip(T* out, int64_t sx, const float (&v)[S]) {
FF_UNROLL
  for (int u = 0; u < S; ++u, out += sx) *out = from_float<T>(v[u]);
}

// out[u * sx] = v[u] for u < min(valid, S); kPastW: the strip may pass W (else valid >= S, untested).
template <bool kPastW, typename T, int S>
FF_HD void store_pixels(T* out, int64_t sx, int valid, const float (&v)[S]) {
  if constexpr (kPastW) {
    if (valid >= S) {
      store_whole_strip(out, sx, v);
    } else {
FF_UNROLL
      for (int u = 0; u < S; ++u, out += sx) {
        if (u < valid) *out = from_float<T>(v[u]);
      }
    }
  } else {
    store_whole_strip(out, sx, v);
  }
}

// z[u] = GELU(z[u]) for the strip's columns x0 + u < W, 0 past W (where the strip is the row's last); kPastW: the
// strip may pass W (else every column is inside, untested).
template <bool kPastW, int S>
FF_HD void gelu_strip(float (&z)[S], int x0, int W) {
FF_UNROLL
  for (int u = 0; u < S; ++u) z[u] = gelu(z[u]);
  if constexpr (kPastW) {
    if (x0 + S > W) {
FF_UNROLL
      for (int u = 0; u < S; ++u) z[u] = x0 + u < W ? z[u] : 0.f;
    }
  }
}

// A block: image b, rows [y0, y1), channels [c_begin, c_begin + chunk). Step t of the sweep loads ctx rows t ..
// t + kRowsPerStep - 1 and those gates rows, then level l turns z_l's rows into z_{l+1}'s rows y = t - o_{l+1}
// .. y + kRowsPerStep - 1 (their k_l + kRowsPerStep - 1 input rows are in the ring by then), one item per (strip
// of kStrip pixels, channel):
//   z_{l+1} = GELU(dwconv_l(z_l));  at the last level (rows t - R ..., of the band only)
//   ctx_local = acc,  acc = g'_0 z_1, then acc = fma(g'_l, z_{l+1}, acc) for l = 1 .. L - 1;  pool += z_L,
// with g' = scale * g (the gates enter their ring scaled).
// The last level reads z_1 .. z_{L-2} of its rows from their rings (kept deep enough) and z_{L-1} from the
// centre row of its own input window: no accumulator in shared memory.
// Rows outside the image enter the rings as zeros (each conv zero-pads its own input), and so do columns
// past W. The sweep starts at t = y0 - R (the halo; 0 for the first band) and ends when row y1 - 1 is out.
// Items run channel fastest and the block's threads are a multiple of chunk, so a thread's channel is the
// same in every phase: with a FixedChain it loads its channel's taps into registers once per sweep (the
// host path, which runs the items in order, loads them per item).
//
// Cost per output element (one item's strip, one level of size K, fp32 FMAs and shared-memory accesses;
// the counted SASS is in the module docstring of focalfast/ops/cuda/focal_modulation.py):
//   K^2 FMAs, (K + 1) (8 + 2 ring_pad(K)) / 64 16-byte window loads, one GELU, K^2 / 16 tap loads where the taps
//   are in shared memory (a tap feeds both output rows; none from registers),
//   1/4 16-byte z stores; at the last level 1/4 16-byte gate loads per level and 1/4 16-byte loads of each of
//   z_1 .. z_{L-2}; once per element: the ctx load (a 2-byte global load, a convert, 1/4 16-byte shared store)
//   and the ctx_local store (a convert, a 2-byte global store). A global row's pointer steps once per step, an
//   item's pixels are a pixel stride apart (a 64-bit add, two integer instructions, a value). An item whose rows
//   and columns are all inside (the image for inner levels, the band for the last; no strip past W but for narrow
//   rows, no channel past cn) takes the rows unrolled, without row tests or row selects (item_row<false>); the others
//   a loop of tested rows.
// kNarrow, kMixed: the layout's narrow and mixed (template parameters: a loop that a launch never runs still counts in
// the static cost report, once a step).
template <typename T, class Chain, bool kNarrow, bool kMixed>
struct ContextFwd {
  using Params = ContextFwdParams;
  using ThreadTaps = typename ThreadTapsOf<Chain>::type;
  static constexpr int kRegisterLevels = ThreadTapsOf<Chain>::kLevels;
  struct Args {
    Params p;
    ContextFwdLayout s;
  };
  static constexpr const char* kName = "context_fwd";

  // Whether level l's taps are in the thread's registers (FixedChain: l is a LevelIndex).
  template <class Level>
  static FF_HD constexpr bool in_registers() {
    if constexpr (Chain::kFixed) {
      return Level::value < kRegisterLevels;
    } else {
      return false;
    }
  }

  // Level l's taps for channel c: the thread's registers or the channel's weight row in shared memory.
  template <class Level>
  static FF_HD auto level_taps(const ThreadTaps& taps, const float* smem, const ContextFwdLayout& s, Level l, int c) {
    if constexpr (in_registers<Level>()) {
      return taps.template level<Chain::taps_before(Level::value)>();
    } else {
      return RunTaps{smem + s.weights + c * s.weight_pitch + s.level_taps[l]};
    }
  }

  // Row y + v of an item from its conv sums z (at the last level also below: z_{L-1} of that row, the centre of
  // its window): GELU, then the next ring's row (inner levels) or the gated sum, the pooling and ctx_local (the
  // last level). kChecked: rows outside the image (inner levels) or the band (the last level) and channels past cn
  // (no ctx_local store) are tested; else the caller has checked that none is. kPastW: columns past W are tested
  // (GELU's zeros, gelu_strip; the store's bound), else the caller has checked that none is.
  template <bool kChecked, bool kPastW, class Level, int S>
  static FF_HD void item_row(const Params& p, const ContextFwdLayout& s, const SweepBand& band, float* smem, Level l,
                             int y, int v, int x0, int c, int next_slot, int gate_slot, T* out, float (&z)[S],
                             const float (&below)[S], float& pooled) {
    const int W = p.geo.W, L = Chain::levels(p.levels), row = y + v;
    if (l != L - 1) {
      const TabledRing& next = s.z[l + 1];
      if (!kChecked || unsigned(row) < unsigned(p.geo.H)) {
        gelu_strip<kPastW>(z, x0, W);
      } else {
FF_UNROLL
        for (int u = 0; u < S; ++u) z[u] = 0.f;
      }
      store_run(smem + next.table_offset(smem, next_slot + v) + next.channel(c) + next.pad + x0, z);
      return;
    }
    if (kChecked && !band.owns(row)) return;
    gelu_strip<kPastW>(z, x0, W);
    const float* gates = smem + s.gates.table_offset(smem, gate_slot + v) + x0;
    float gate[S], acc[S] = {}, term[S] = {};
FF_UNROLL
    for (int m = 0; m < kMaxFocalLevel; ++m) {  // acc = g_0 z_1, then fma(g_m, z_{m+1}, acc) in order
      if (m < L) {
        if (m < L - 2) {
          const RowRing& ring = s.z[m + 1];
          load_run(ring.row(smem, ring.slot(row)) + ring.channel(c) + ring.pad + x0, term);
        }
        load_run(gates + s.gates.channel(m), gate);
FF_UNROLL
        for (int u = 0; u < S; ++u) {
          const float z_next = m == L - 1 ? z[u] : m == L - 2 ? below[u] : term[u];
          acc[u] = m == 0 ? gate[u] * z_next : fmaf(gate[u], z_next, acc[u]);
        }
      }
    }
FF_UNROLL
    for (int u = 0; u < S; ++u) pooled += z[u];
    if (!kChecked || c < band.cn) store_pixels<kPastW>(out + v * p.ctx_local.sy, p.ctx_local.sx, W - x0, acc);
  }

  template <int K, class Level>
  static FF_HD void level(const Params& p, const ContextFwdLayout& s, const SweepBand& band, float* smem,
                          ThreadTaps& taps, Level l, int t, T* out_row) {
    const int y = t - s.lag[l];
    if_level(
        Chain::is_last(p.levels, l),
        [&] {
          if (y < band.y1 && y + kRowsPerStep > band.y0) level_items<K>(p, s, band, smem, taps, l, y, true, out_row);
        },
        [&] {
          if (y < p.geo.H) {
            // Rows above the image are zero: their slots are still zero from the block's start (no row was
            // written before them). Rows below it only need zeros for the next level's padding: zero_rows.
            if (y + kRowsPerStep > 0) level_items<K>(p, s, band, smem, taps, l, y, false, out_row);
          } else {
            zero_rows(s, s.z[l + 1], smem, p.chunk, y);
          }
        });
  }

  // The step's rows y, y + 1, ... of ring `next` set to zero, an item per (strip, channel) as in level_items: rows
  // past the image, which the next level reads as its padding.
  static FF_HD void zero_rows(const ContextFwdLayout& s, const TabledRing& next, float* smem, int chunk, int y) {
    const int next_slot = next.slot(y);
    FF_FOR_EACH(item, s.strip_items) {
      const int x0 = (item >> s.chunk_shift) * kStrip, c = item & (chunk - 1);
      const float zero[kStrip] = {};
FF_NO_UNROLL
      for (int v = 0; v < kRowsPerStep; ++v) {
        store_run(smem + next.table_offset(smem, next_slot + v) + next.channel(c) + next.pad + x0, zero);
      }
    }
  }

  template <int K, class Level>
  static FF_HD void level_items(const Params& p, const ContextFwdLayout& s, const SweepBand& band, float* smem,
                                ThreadTaps& taps, Level l, int y, bool last, T* out_row) {
    const int H = p.geo.H, chunk = p.chunk;
    const TabledRing &in = s.z[l], &next = s.z[l + 1];  // next: unused at the last level
    const int slot0 = in.slot(y - K / 2), next_slot = next.slot(y), gate_slot = s.gates.slot(y);
    // The step's rows all inside the image (inner levels: their outputs are the next level's input) or the band
    // (the last level: the rows it writes).
    const bool inside = last ? y >= band.y0 && y + kRowsPerStep <= band.y1 : y >= 0 && y + kRowsPerStep <= H;
    FF_FOR_EACH(item, s.wide_items) {
      strip_item<K, kStrip>(p, s, band, smem, taps, l, y, last, inside, slot0, next_slot, gate_slot, out_row,
                            (item >> s.chunk_shift) * kStrip, item & (chunk - 1), item);
    }
    // Half strips on the threads past the whole strips' (the warp they left part idle). A loop of its own, not a
    // branch beside the whole strips': the static cost report shares a branch's blocks by the innermost counted
    // `if`, which the two copies of strip_item would share.
    if constexpr (kMixed) {
      FF_FOR_EACH(item, s.items) {
        if (item >= s.wide_items) {
          strip_item<K, kStrip / 2>(p, s, band, smem, taps, l, y, last, inside, slot0, next_slot, gate_slot, out_row,
                                    s.half_x0 + ((item - s.wide_items) >> s.chunk_shift) * (kStrip / 2),
                                    item & (chunk - 1), item);
        }
      }
    }
  }

  // One item of level_items: channel c at the strip of S pixels from column x0, its rows y, y + 1, ...; `item` its
  // pooling sum's slot.
  template <int K, int S, class Level>
  static FF_HD void strip_item(const Params& p, const ContextFwdLayout& s, const SweepBand& band, float* smem,
                               ThreadTaps& taps, Level l, int y, bool last, bool inside, int slot0, int next_slot,
                               int gate_slot, T* out_row, int x0, int c, int item) {
    const int W = p.geo.W;
    const TabledRing& in = s.z[l];
#ifndef __CUDA_ARCH__
    taps.load(p.weights, band.c_begin + c, c < band.cn);  // the host runs the items in order: each its channel's
#endif
    T* const out = out_row + (x0 * p.ctx_local.sx + c);
    float conv[kRowsPerStep][S] = {}, centre[kRowsPerStep][S];
    conv_rows<K>(smem, in, slot0, in.channel(c), x0, level_taps(taps, smem, s, l, c), conv, centre);
    float pooled = 0.f;
    // Every row of the step inside, and the strip and channel (but for narrow rows' strips): the rows unrolled,
    // without row tests (narrow rows' strips past W in a copy with column tests, where a full strip pays none);
    // else a loop of tested rows. The loop's statement runs for every item (no rows for the first kind): the static
    // cost report counts its body by its host-path trips, which it could not map if no item of a case ran it.
    const bool untested = inside && (kNarrow || x0 + S <= W) && c < band.cn;
    const auto unrolled_rows = [&](auto past_w) {
FF_UNROLL
      for (int v = 0; v < kRowsPerStep; ++v) {
        item_row<false, decltype(past_w)::value>(p, s, band, smem, l, y, v, x0, c, next_slot, gate_slot, out,
                                                 conv[v], centre[v], pooled);
      }
    };
    if (untested) {
      if (kNarrow && x0 + S > W) {
        unrolled_rows(std::true_type{});
      } else {
        unrolled_rows(std::false_type{});
      }
    }
FF_NO_UNROLL
    for (int v = 0; v < (untested ? 0 : kRowsPerStep); ++v) {
      float z[S], below[S];
      pick_row(conv, v, z);
      pick_row(centre, v, below);
      item_row<true, true>(p, s, band, smem, l, y, v, x0, c, next_slot, gate_slot, out, z, below, pooled);
    }
    if (last && p.pooled_sum.ptr) smem[s.pool + item] += pooled;
  }

  static FF_HD void run(const Args& args, int block, float* smem) {
    const Params& p = args.p;
    const ContextFwdLayout& s = args.s;
    const Geometry& geo = p.geo;
    const SweepLevels& lv = p.levels;
    const int chunk = p.chunk;
    const SweepBand band(block, geo, p.band_rows, 1, 0, chunk);
    const int b = band.b, c_begin = band.c_begin, cn = band.cn;
    const int H = geo.H, W = geo.W, L = Chain::levels(lv), R = lv.offset(L);

    // Zeros from s.zeroed to the slot tables (16-byte stores), the tables; the weights of the levels not in
    // registers (zero past cn).
    FF_FOR_EACH(i, (s.tables - s.zeroed) / 4) {
      float zero[4] = {};
      store_run(smem + s.zeroed + 4 * i, zero);
    }
    s.gates.fill_table(smem);
    for (int l = 0; l < L; ++l) s.z[l].fill_table(smem);
    ThreadTaps taps;
#ifdef __CUDA_ARCH__
    const int thread_channel = int(threadIdx.x) & (chunk - 1);  // the thread's channel in every phase (see above)
    taps.load(p.weights, c_begin + thread_channel, thread_channel < cn);
#endif
    if (kRegisterLevels < L) {
      const int first = lv.taps_before(kRegisterLevels);
      const float* weights = static_cast<const float*>(p.weights.ptr) + p.weights.at(first, 0, 0) + c_begin;
      const int tap_stride = int(p.weights.sb);  // C: the binding's tap-major copy
      FF_FOR_EACH(i, (lv.taps() - first) << s.chunk_shift) {
        const int tap = i >> s.chunk_shift, c = i & (chunk - 1);
        smem[s.weights + c * s.weight_pitch + first + tap] = c < cn ? weights[tap * tap_stride + c] : 0.f;
      }
    }
    FF_BARRIER();

    const int64_t ctx_sx = p.ctx.sx, gate_sx = p.gates.sx;
    const TabledRing& z0 = s.z[0];
    // The step's rows: ctx's and the gates' row t, the last level's output row t - R (channel c_begin, pixel 0).
    const int t0 = max_int(0, band.y0 - R);
    const T* ctx_row = row_start<const T>(p.ctx, b, t0) + c_begin;
    const T* gate_row = static_cast<const T*>(p.gates.ptr) + (b * p.gates.sb + t0 * p.gates.sy);
    T* out_row = row_start<T>(p.ctx_local, b, t0 - R) + c_begin;
    for (int t = t0; t < band.y1 + R; t += kRowsPerStep, ctx_row += kRowsPerStep * p.ctx.sy,
             gate_row += kRowsPerStep * p.gates.sy, out_row += kRowsPerStep * p.ctx_local.sy) {
      // ctx rows t .. t + kRowsPerStep - 1 (zeros past the image and past cn) into ring 0: narrow rows an item per
      // (strip, channel), wide rows an item per (strip, 4 channels), a pixel's pointer step serving 4 values and a
      // row's items a quarter of the warp passes (stage 1: 28 items, one pass; at 7x7 the 4 values' tests and one
      // pass of 4 channels cost more than they saved: stage 4 srf 5.11 -> 5.90); those gates rows (scaled: the last
      // level's sum comes out scaled), an item per value or per (level, strip) (ContextFwdLayout::narrow).
      const int z0_slot = z0.slot(t), gate_slot = s.gates.slot(t);
      if constexpr (kNarrow) {
        FF_FOR_EACH(item, s.strip_items) {
          const int c = item & (chunk - 1), x0 = (item >> s.chunk_shift) * kStrip, valid = c < cn ? W - x0 : 0;
          const T* in = ctx_row + (x0 * ctx_sx + c);
          float* run = smem + z0.channel(c) + z0.pad + x0;  // a ring row's offset away
FF_NO_UNROLL
          for (int v = 0; v < kRowsPerStep; ++v, in += p.ctx.sy) {
            float z[kStrip];
            load_pixels(in, ctx_sx, t + v < H ? valid : 0, z);
            store_run(run + z0.table_offset(smem, z0_slot + v), z);
          }
        }
      } else {
        FF_FOR_EACH(item, s.ctx_items) {
          const int c = (item & ((chunk >> 2) - 1)) * 4, x0 = (item >> (s.chunk_shift - 2)) * kStrip;
          const T* in = ctx_row + (x0 * ctx_sx + c);
          // A ring row's offset away; channel c + e is e pitches on (c % 4 == 0: one group of 8, RowRing::channel).
          float* run = smem + z0.channel(c) + z0.pad + x0;
FF_NO_UNROLL
          for (int v = 0; v < kRowsPerStep; ++v, in += p.ctx.sy) {
            float z[4][kStrip];
            load_quad(in, ctx_sx, t + v < H ? W - x0 : 0, cn - c, z);
            float* const row = run + z0.table_offset(smem, z0_slot + v);
FF_UNROLL
            for (int e = 0; e < 4; ++e) store_run(row + e * z0.pitch, z[e]);
          }
        }
      }
      if constexpr (kNarrow) {
        FF_FOR_EACH(item, s.gate_items) {
          const int x = item >> (s.gate_shift + 1), v = (item >> s.gate_shift) & 1, l = item & ((1 << s.gate_shift) - 1);
          if (l < L) {
            const bool inside = x < W && t + v < H;
            const float gate = inside ? to_float(gate_row[v * p.gates.sy + x * gate_sx + l * p.gates.sl]) : 0.f;
            smem[s.gates.table_offset(smem, gate_slot + v) + s.gates.channel(l) + x] = p.scale * gate;
          }
        }
      } else {
        FF_FOR_EACH(item, s.gate_items) {
          const int l = item >> s.gate_shift, x0 = (item & ((1 << s.gate_shift) - 1)) * kStrip;
          if (x0 < s.width) {
            const T* in = gate_row + (x0 * gate_sx + l * p.gates.sl);
            float* run = smem + s.gates.channel(l) + x0;  // a ring row's offset away
FF_NO_UNROLL
            for (int v = 0; v < kRowsPerStep; ++v, in += p.gates.sy) {
              float gate[kStrip];
              load_pixels(in, gate_sx, t + v < H ? W - x0 : 0, gate);
FF_UNROLL
              for (int u = 0; u < kStrip; ++u) gate[u] *= p.scale;
              store_run(run + s.gates.table_offset(smem, gate_slot + v), gate);
            }
          }
        }
      }
      FF_BARRIER();

      Chain::template for_each_level<0, false>(lv, [&](auto l, auto k) {
        level<decltype(k)::value>(p, s, band, smem, taps, l, t, out_row);
        FF_BARRIER();
      });
    }

    if (p.pooled_sum.ptr) {  // the items' sums in a fixed order
      FF_FOR_EACH(c, cn) {
        float sum = 0.f;
        for (int i = 0; i < s.items >> s.chunk_shift; ++i) sum += smem[s.pool + i * chunk + c];
        static_cast<float*>(p.pooled_sum.ptr)[p.pooled_sum.at(band.partial_row(), 0, 0) + c_begin + c] = sum;
      }
    }
  }
};

// A thread: one channel group of a strip of `strip` pixels of one column of image b (column_task).
//   z = GELU(sum_taps w * z_in);  acc = acc_in + gates_l * z;  ctx_out = scale * acc (last level);
//   pool_partial[b, band * W + x] = sum over the strip of z (last level: the global context's partial mean).
template <typename T, typename Z>
struct ConvLevelFwd {
  using Params = ConvLevelFwdParams;
  static constexpr const char* kName = "conv_level_fwd";

  static FF_HD void run(const Params& p, const GridThread& thread) {
    const Geometry& geo = p.geo;
    const ColumnTask task = column_task(thread, geo, p.strip);
    const int b = task.b, x = task.x, c0 = task.c0, n = task.n;
    Group pooled = {};
    for (int y = task.y0; y < task.y1; ++y) {
      Group z = depthwise_conv<Z>(p.z_in, p.weight, p.k, geo, b, y, x, c0, n);
      Group acc = p.acc_in.ptr ? load_at<float>(p.acc_in, b, y, x, c0, n) : Group{};
      const float gate = load_gate<T>(p.gates, b, y, x, p.level);
FF_UNROLL
      for (int e = 0; e < kGroup; ++e) {
        z.v[e] = gelu(z.v[e]);
        acc.v[e] = fmaf(gate, z.v[e], acc.v[e]);
        pooled.v[e] += z.v[e];
      }
      if (p.acc_out.ptr) store_at<float>(p.acc_out, b, y, x, c0, n, acc);
      if (p.z_out.ptr) store_at<float>(p.z_out, b, y, x, c0, n, z);
      if (p.ctx_out.ptr) {
FF_UNROLL
        for (int e = 0; e < kGroup; ++e) acc.v[e] *= p.scale;
        store_at<T>(p.ctx_out, b, y, x, c0, n, acc);
      }
    }
    if (p.pool_partial.ptr) store_at<float>(p.pool_partial, b, thread.band * geo.W + x, 0, c0, n, pooled);
  }
};

// A thread: one channel group of one column of a band of rows (column_task), walking down the rows.
//   out = q * (linear + scale * gates_L * global_term)      (linear holds the bias)
// Per 8 channels of a pixel: the q, linear and gate loads, 2 fp32 operations a channel, one store.
// Q: q's access, R: linear's and out's (output_fwd chooses them).
template <typename T, Access Q, Access R>
struct OutputFwd {
  using Params = OutputFwdParams;
  static constexpr const char* kName = "output_fwd";

  struct Cursors {
    RowCursor<const T> q, linear, gate;
    RowCursor<T> out;
    FF_HD void next() {
      q.next();
      linear.next();
      gate.next();
      out.next();
    }
  };

  static FF_HD void row(Cursors& c, int n, const Group& global) {
    const Group q = load_channels<Q>(c.q.p, n), linear = load_channels<R>(c.linear.p, n);
    const float gate = to_float(*c.gate.p);
    Group out;
FF_UNROLL
    for (int e = 0; e < kGroup; ++e) out.v[e] = q.v[e] * fmaf(gate, global.v[e], linear.v[e]);
    store_channels<R>(c.out.p, n, out);
    c.next();
  }

  static FF_HD void run(const Params& p, const GridThread& thread) {
    const ModulatorArgs& m = p.mod;
    const ColumnTask task = column_task(thread, p.geo, p.rows);
    const Group global = scaled_global_term(m, task);
    Cursors c{row_cursor<const T>(p.q, task), row_cursor<const T>(m.linear, task), gate_cursor<T>(m.gates, task, m.gates.L),
              row_cursor<T>(p.out, task)};
FF_NO_UNROLL
    for (int y = task.y0; y < task.y1; ++y) row(c, task.n, global);
  }
};

// A thread: output element m of outer index o (its band): sums its column in order r = 0, 1, ...
// Threads run along the columns (coalesced where the columns are contiguous). kRuns: every column is a run of
// contiguous floats from a 16-byte boundary, rows a multiple of 4 (the gate partials, [pixel, level][chunks]): a
// 16-byte load feeds 4 adds, where a value otherwise costs a load, a 64-bit address step and the loop's test.
template <bool kRuns>
struct ReduceSum {
  using Params = ReduceParams;
  static constexpr const char* kName = "reduce_sum";

  static FF_HD void run(const Params& p, const GridThread& thread) {
    const float* in = p.in + thread.band * p.so + thread.item * p.sm;
    float sum = 0.f;
    if constexpr (kRuns) {
FF_NO_UNROLL
      for (int r = 0; r < p.rows; r += 4) {
        float v[4];
        load_run(in + r, v);
FF_UNROLL
        for (int u = 0; u < 4; ++u) sum += v[u];
      }
    } else {
FF_NO_UNROLL
      for (int r = 0; r < p.rows; ++r, in += p.sr) sum += *in;
    }
    p.out[int64_t(thread.band) * p.cols + thread.item] = sum * p.scale;
  }
};

}  // namespace

// Calls f(Chain{}) with lv's FixedChain (dispatch_chain) where a block's threads are a multiple of chunk (a thread's
// channel, and with it its taps in registers, the same in every phase), else with GenericChain.
template <class F>
void dispatch_context_fwd_chain(const SweepLevels& lv, int W, int chunk, F&& f) {
  dispatch_chain(lv, [&](auto chain) {
    if (decltype(chain)::kFixed && sweep_threads(W, chunk) % chunk != 0) {
      f(GenericChain{});
    } else {
      f(chain);
    }
  });
}

int64_t context_fwd_smem_bytes(const SweepLevels& levels, int W, int chunk) {
  int64_t bytes = 0;
  dispatch_context_fwd_chain(levels, W, chunk, [&](auto chain) {
    bytes = int64_t(ContextFwdLayout(levels, W, chunk, decltype(chain)::kFixed).total) * int64_t(sizeof(float));
  });
  return bytes;
}

void context_fwd(const ContextFwdParams& p, const Stream& stream) {
  const int blocks = int(sweep_band_count(p.geo, p.band_rows, 1) * ceil_div(p.geo.C, p.chunk));
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    dispatch_context_fwd_chain(p.levels, p.geo.W, p.chunk, [&](auto chain) {
      using Chain = decltype(chain);
      const ContextFwdLayout layout(p.levels, p.geo.W, p.chunk, Chain::kFixed);
      // Threads: one per item of a level (strips x chunk, at most kSweepThreads). Shared memory sets the occupancy:
      // 2 blocks per SM at FocalNet-T stage 1 (srf: 32 channels, 95 KB, 7 warps; lrf: 16 channels, 94 KB, 4 warps),
      // the launch code picks the chunk for two per SM (a block's barrier waits hide behind the other's work);
      // registers (ptxas sm_90a: 128 at stages 1 and 2, 123 / 128 for narrow rows srf / lrf) fit it: 2 blocks x 256
      // threads x 128 = 64 K.
      // A single warp where a level's items fit one (7x7 maps: the second warp of sweep_threads would idle in the
      // levels).
      const int threads = layout.items <= 32 ? 32 : sweep_threads(p.geo.W, p.chunk);
      const int64_t smem_bytes = int64_t(layout.total) * int64_t(sizeof(float));
      if constexpr (Chain::kFixed) {
        if (layout.narrow) {
          launch_sweep<ContextFwd<T, Chain, true, false>>({p, layout}, blocks, threads, smem_bytes, stream);
        } else if (layout.mixed) {
          launch_sweep<ContextFwd<T, Chain, false, true>>({p, layout}, blocks, threads, smem_bytes, stream);
        } else {
          launch_sweep<ContextFwd<T, Chain, false, false>>({p, layout}, blocks, threads, smem_bytes, stream);
        }
      } else {
        launch_sweep<ContextFwd<T, Chain, false, false>>({p, layout}, blocks, threads, smem_bytes, stream);
      }
    });
  });
}

void conv_level_fwd(const ConvLevelFwdParams& p, const Stream& stream) {
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    dispatch_level_input<T>(p.z_in_fp32, [&](auto z_tag) {
      using Z = decltype(z_tag);
      launch_grid<ConvLevelFwd<T, Z>>(p, column_grid(p.geo, p.strip), stream);
    });
  });
}

// Aligned linear and out (C % 8 == 0: every thread's group is whole) take vector accesses, and so does an aligned q
// (not a view of f's output); else bounded scalars.
void output_fwd(const OutputFwdParams& p, const Stream& stream) {
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    const auto launch = [&](auto q, auto r) {
      launch_grid<OutputFwd<T, decltype(q)::value, decltype(r)::value>>(p, column_grid(p.geo, p.rows), stream);
    };
    using V = AccessTag<Access::kVector>;
    using S = AccessTag<Access::kScalar>;
    using B = AccessTag<Access::kBounded>;
    if (!p.mod.linear.aligned || !p.out.aligned) {
      launch(B{}, B{});
    } else if (p.q.aligned) {
      launch(V{}, V{});
    } else {
      launch(S{}, V{});
    }
  });
}

// The outer index and the columns merge into one column index where their strides allow (out is contiguous).
void reduce_sum(const ReduceParams& p, const Stream& stream) {
  ReduceParams merged = p;
  if (int64_t(p.outer) * p.cols <= kMaxGridItems) {
    if (p.cols == 1) {
      merged.sm = p.so;
      merged.cols = p.outer;
      merged.outer = 1;
    } else if (p.so == int64_t(p.cols) * p.sm) {
      merged.cols = p.outer * p.cols;
      merged.outer = 1;
    }
  }
  const bool runs = merged.sr == 1 && merged.rows % 4 == 0 && reinterpret_cast<uintptr_t>(merged.in) % 16 == 0 &&
                    (merged.cols == 1 || merged.sm % 4 == 0) && (merged.outer == 1 || merged.so % 4 == 0);
  dispatch_bool(runs, [&](auto kRuns) {
    launch_grid<ReduceSum<decltype(kRuns)::value>>(merged, grid_shape(merged.cols, merged.outer, 1), stream);
  });
}

}  // namespace focalfast
