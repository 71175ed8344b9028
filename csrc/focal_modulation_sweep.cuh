// The row-streaming sweep shared by the fused forward (context_fwd) and backward (context_bwd) kernels.
//
// One CUDA block owns one image b and one chunk of `chunk` channels (a power of two >= 8) and sweeps the
// image rows once, keeping the few rows that each level still needs in shared-memory rings. A level
// whose row y is produced at step t "lags" the sweep by t - y rows (forward, top to bottom) or y - (H-1-t)
// rows (backward, bottom to top); a ring of depth D holds the last D rows produced, row y in slot y mod D.
// Ring rows are fp32, channel-major (RowRing below), and padded left and right for the conv that reads
// them, so the padding columns stay zero for the whole sweep.
//
// The block body is written as a sequence of phases separated by barriers:
//     FF_FOR_EACH(item, count) { ...one item... }  FF_BARRIER();
// Within a phase no item reads what another item of the same phase writes. On the GPU the items are
// spread over the block's threads; on the host (CPU tensors: tests without a GPU) they run in order,
// one block after the other, with shared memory as a host array. Both orders give the same result.
#pragma once

#include <type_traits>
#include <utility>
#include <vector>

#include "focal_modulation_common.cuh"

#ifdef __CUDA_ARCH__
#define FF_FOR_EACH(item, count) \
  for (int item = int(threadIdx.x), item##_end = (count); item < item##_end; item += int(blockDim.x))
#define FF_BARRIER() __syncthreads()
#else
#define FF_FOR_EACH(item, count) for (int item = 0, item##_end = (count); item < item##_end; ++item)
#define FF_BARRIER() ((void)0)
#endif

namespace focalfast {

constexpr int kSweepThreads = 256;

// Hands out consecutive float regions of shared memory.
struct SmemAllocator {
  int64_t used = 0;
  FF_HD int64_t take(int64_t floats) {
    const int64_t base = used;
    used += (floats + 3) / 4 * 4;  // keep every region 16-byte aligned
    return base;
  }
};

// ---- Register-blocked strips on channel-major ring rows --------------------------------------------
//
// A conv item computes one channel at a strip of kStrip consecutive pixels of one output row. For each
// of the K input rows it loads the strip's window (kStrip + 2 pad floats: 16-byte loads) into registers
// once and feeds it to K * kStrip FMAs; the tap loops unroll (K is a template parameter), the rings' row
// offsets come from slot tables (context_fwd) or a step's table of rows (context_bwd), never a division. Items run
// channel fastest: a warp reads one window offset of 32 channels (or of 8 / 16 channels of 4 / 2 strips). Rings
// are laid out for kStrip-pixel strips (strip_width); a strip of S = 4 pixels (context_bwd where kStrip-pixel items
// fill less than a warp) reads the same rings, twice as many items a row.
constexpr int kStrip = 8;

// Zero columns on each side of a ring row read by a conv of size k: k / 2 rounded up to a multiple of 4,
// so that every strip's window starts 16-byte aligned.
FF_HD constexpr int ring_pad(int k) { return (k / 2 + 3) / 4 * 4; }

// A ring of `depth` rows (row y in slot y mod depth); a row holds `chunk` channels, each a run of `pitch`
// floats with image column x at pad + x and zeros around it. Channel c starts at c * pitch + (c / 8) * 8:
// pitch = 4 (mod 8) puts the 16-byte loads of 8 consecutive channels in distinct banks, and the skew
// does the same for the scalar stores of (column, group of 8 channels) items.
// slot(y) is n mod depth for n = y + kSlotBias * depth by a direct remainder: with magic = ceil(2^32 / depth)
// mod 2^32 (0 for depth 1), n mod depth = mul_high(magic * n mod 2^32, depth). Exact for 0 <= n < 2^32 / depth:
// magic * n / 2^32 = n / depth + e with 0 <= e < n / 2^32 < 1 / depth, so its fraction times depth floors to the
// remainder. That covers rows -kSlotBias <= y < kMaxSweepRows (the binding checks H). Host and GPU run the same
// arithmetic, so the host path checks it.
struct RowRing {
  int base = 0, row_floats = 0, depth = 1, pitch = 0, pad = 0;
  unsigned magic = 0;

  FF_HD int channel(int c) const { return c * pitch + (c >> 3) * 8; }
  FF_HD int slot(int y) const {
    const unsigned n = unsigned(y + kSlotBias * depth);
    return int(mul_high(n * magic, unsigned(depth)));
  }
  FF_HD int offset(int slot) const { return base + checked(slot) * row_floats; }  // of the slot's row in smem
  FF_HD float* row(float* smem, int slot) const { return smem + offset(slot); }
  FF_HD const float* row(const float* smem, int slot) const { return smem + offset(slot); }
  // The slot itself on the GPU; on the host, a slot outside the ring throws (the GPU would read or write
  // shared memory out of bounds there).
  FF_HD int checked(int slot) const {
#ifndef __CUDA_ARCH__
    if (slot < 0 || slot >= depth) {
      throw std::out_of_range("focalfast: ring slot " + std::to_string(slot) + " outside a ring of depth " +
                              std::to_string(depth));
    }
#endif
    return slot;
  }
};

// Row width of the strips: W rounded up to whole strips.
FF_HD int strip_width(int W) { return (W + kStrip - 1) / kStrip * kStrip; }

inline RowRing row_ring(SmemAllocator& a, int depth, int W, int chunk, int pad) {
  RowRing r;
  r.depth = depth;
  r.magic = 0xFFFFFFFFu / unsigned(depth) + 1u;  // ceil(2^32 / depth), wrapped to 0 for depth 1
  r.pad = pad;
  r.pitch = strip_width(W) + 2 * pad + 4;
  r.row_floats = int((int64_t(chunk) * r.pitch + chunk / kGroup * 8 + 3) / 4 * 4);
  r.base = int(a.take(int64_t(depth) * r.row_floats));
  return r;
}

// A ring with a slot table (context_fwd's; context_bwd decodes its rows once a step, BwdRingPlan): 2 depth ints in
// shared memory, entry s the offset of slot s mod depth. A step's rows slot0, slot0 + 1, ... (slot0 < depth, fewer
// than depth rows) are then one shared load each (table_offset: the warp's lanes read one word, a broadcast), with
// neither a wrap nor a multiply-add. (A separate type: a field more in RowRing would shift context_bwd's ring fields
// off the 8-byte pairs its constant-bank loads take two at a time.)
struct TabledRing : RowRing {
  int table = 0;  // the slot table's offset in shared memory (floats holding int bits)

  // offset(s mod depth) for 0 <= s < 2 depth, from the slot table.
  FF_HD int table_offset(const float* smem, int s) const {
#ifndef __CUDA_ARCH__
    if (s < 0 || s >= 2 * depth) {
      throw std::out_of_range("focalfast: slot table entry " + std::to_string(s) + " of a ring of depth " +
                              std::to_string(depth));
    }
#endif
    return int(float_to_bits(smem[table + s]));
  }
  // Writes the slot table, the block's threads sharing the entries (before the barrier that ends the set-up).
  FF_HD void fill_table(float* smem) const {
    FF_FOR_EACH(s, 2 * depth) smem[table + s] = bits_to_float(uint32_t(offset(s < depth ? s : s - depth)));
  }
};

// A TabledRing of row_ring's rows; its table is placed by add_slot_table.
inline TabledRing tabled_ring(SmemAllocator& a, int depth, int W, int chunk, int pad) {
  TabledRing r;
  static_cast<RowRing&>(r) = row_ring(a, depth, W, chunk, pad);
  return r;
}

// Places ring r's slot table (2 depth ints) in shared memory.
inline void add_slot_table(SmemAllocator& a, TabledRing& r) { r.table = int(a.take(2 * int64_t(r.depth))); }

// N consecutive floats of shared memory (16-byte aligned, N a multiple of 4) to or from registers.
template <int N>
FF_HD void load_run(const float* src, float (&dst)[N]) {
#ifdef __CUDA_ARCH__
FF_UNROLL
  for (int q = 0; q < N / 4; ++q) {
    const float4 v = reinterpret_cast<const float4*>(src)[q];
    dst[4 * q] = v.x;
    dst[4 * q + 1] = v.y;
    dst[4 * q + 2] = v.z;
    dst[4 * q + 3] = v.w;
  }
#else
  for (int i = 0; i < N; ++i) dst[i] = src[i];
#endif
}

template <int N>
FF_HD void store_run(float* dst, const float (&src)[N]) {
#ifdef __CUDA_ARCH__
FF_UNROLL
  for (int q = 0; q < N / 4; ++q) {
    reinterpret_cast<float4*>(dst)[q] = make_float4(src[4 * q], src[4 * q + 1], src[4 * q + 2], src[4 * q + 3]);
  }
#else
  for (int i = 0; i < N; ++i) dst[i] = src[i];
#endif
}

// ---- A channel's conv weights -----------------------------------------------------------------------
//
// A conv reads its K x K taps a kernel row at a time: taps.row<K>(i, w) sets w[j] = tap (i, j) for j < K (w has
// tap_row_width(K) floats; the rest are zeros or padding that no FMA reads).
// RowTaps: the channel's row of a block's TapRows in shared memory (tap_row_width(K) / 4 16-byte loads a kernel row:
// K = 7 takes 2 loads, not 7; context_bwd); RunTaps: the channel's taps as one run of shared memory (a load at a
// constant offset a tap; context_fwd, whose items cover so few pixels at 7x7 that TapRows' longer fill cost more than
// it saved); RegisterTaps: kCount weights in registers, a level's taps from `first` on (a thread whose channel is
// fixed loads them once per sweep; every index is a compile-time constant once the tap loops unroll); NoThreadTaps:
// none in registers.
FF_HD constexpr int tap_row_width(int k) { return (k + 3) / 4 * 4; }

// The layout of a block's taps in shared memory: a row of `pitch` floats per channel of the chunk; in it, level l's
// kernel row i at level[l] + i * tap_row_width(k_l), padded to a multiple of 4 floats (16-byte aligned; the padding
// is loaded with its row, never read by an FMA, and not written). pitch / 4 is odd: the 16-byte loads of 8
// consecutive channels (a quarter warp's) fall in distinct banks.
struct TapRows {
  int pitch = 0;
  int level[kMaxFocalLevel] = {};

  TapRows() = default;
  explicit TapRows(const SweepLevels& lv) {
    int used = 0;
    for (int l = 0; l < lv.L; ++l) {
      level[l] = used;
      used += lv.k[l] * tap_row_width(lv.k[l]);
    }
    pitch = used / 4 % 2 == 1 ? used : used + 4;
  }
  // Writes every level's taps of the chunk's channels (zero past cn) into the rows at dst, from the tap-major fp32
  // weights [taps, C]: an item per (tap, channel), its kernel row i = tap / k by a multiply (exact for tap < 2^16 /
  // k), no division. The padding is not written: no FMA reads it.
  FF_HD void fill(float* dst, const SweepLevels& lv, const View& weights, int c_begin, int cn, int chunk_shift) const {
    const int chunk = 1 << chunk_shift, tap_stride = int(weights.sb);  // C: the binding's tap-major copy
    for (int l = 0; l < lv.L; ++l) {
      const int k = lv.k[l], width = tap_row_width(k);
      const unsigned inverse = (65536u + unsigned(k) - 1u) / unsigned(k);  // ceil(2^16 / k)
      const float* src = static_cast<const float*>(weights.ptr) + weights.at(lv.taps_before(l), 0, 0) + c_begin;
      float* const rows = dst + level[l];
      FF_FOR_EACH(e, (k * k) << chunk_shift) {
        const int c = e & (chunk - 1), tap = e >> chunk_shift, i = int((unsigned(tap) * inverse) >> 16);
        rows[c * pitch + i * width + tap - i * k] = c < cn ? src[tap * tap_stride + c] : 0.f;
      }
    }
  }
};

struct RowTaps {
  const float* w;  // the level's kernel row 0 in the channel's row of TapRows (16-byte aligned)
  template <int K>
  FF_HD void row(int i, float (&out)[tap_row_width(K)]) const {
    load_run(w + i * tap_row_width(K), out);
  }
};

struct RunTaps {
  const float* w;  // the level's tap 0 in the channel's run
  template <int K>
  FF_HD void row(int i, float (&out)[tap_row_width(K)]) const {
FF_UNROLL
    for (int j = 0; j < tap_row_width(K); ++j) out[j] = j < K ? w[i * K + j] : 0.f;
  }
};

struct NoThreadTaps {
  FF_HD void load(const View&, int, bool) {}
};

template <int kCount>
struct RegisterTaps {
  float w[kCount];
  // w[i] = weights[i, c] (fp32 [kCount, C], tap-major) for a channel c inside the tensor, else 0.
  FF_HD void load(const View& weights, int c, bool inside) {
    const float* src = static_cast<const float*>(weights.ptr) + c;
FF_UNROLL
    for (int i = 0; i < kCount; ++i) w[i] = inside ? src[i * weights.sb] : 0.f;
  }
  template <int kFirst>
  struct Level {
    const float (&w)[kCount];
    template <int K>
    FF_HD void row(int i, float (&out)[tap_row_width(K)]) const {
FF_UNROLL
      for (int j = 0; j < tap_row_width(K); ++j) out[j] = j < K ? w[kFirst + i * K + j] : 0.f;
    }
  };
  template <int kFirst>
  FF_HD Level<kFirst> level() const {
    return {w};
  }
};

// acc[p] += sum_{i,j < K} w[i, j] z[y + i - r, x0 + p + j - r] for p < S, r = K / 2: the depthwise conv
// of one channel at a strip of S pixels (kStrip; context_bwd's narrow maps: 4). rows(i) points at pixel x0 of
// z's row y - r + i in a ring row (16-byte aligned, with at least ring_pad(K) columns of padding on each side);
// taps.row<K>(i, w): w[j] = w[i, j] (RowTaps, RunTaps, RegisterTaps). kFlip uses w[K-1-i, K-1-j]: the adjoint conv (the
// gradient of a conv's input from the gradient of its output).
// Per input row: (S + 2 pad) / 4 16-byte loads, a kernel row of taps (tap_row_width(K) / 4 16-byte loads from
// shared memory, none from registers), K * S FMAs.
template <int K, bool kFlip, class Rows, class Taps, int S>
FF_HD void conv_strip(const Rows& rows, const Taps& taps, float (&acc)[S]) {
  constexpr int r = K / 2, pad = ring_pad(K), n = S + 2 * pad;
FF_UNROLL
  for (int i = 0; i < K; ++i) {
    float window[n], w[tap_row_width(K)];
    load_run(rows(i) - pad, window);
    taps.template row<K>(kFlip ? K - 1 - i : i, w);
FF_UNROLL
    for (int j = 0; j < K; ++j) {
      const float wv = w[kFlip ? K - 1 - j : j];
FF_UNROLL
      for (int p = 0; p < S; ++p) acc[p] = fmaf(wv, window[pad - r + p + j], acc[p]);
    }
  }
}

// p + step through an empty asm on the GPU: the pixels of a strip past W stay a pointer chain (a 64-bit add a pixel),
// which nvcc otherwise turns into an address formed from a 64-bit multiply under each pixel's predicate.
template <typename P>
FF_HD P* next_pixel(P* p, int64_t step) {
  p += step;
#ifdef __CUDA_ARCH__
  asm("" : "+l"(p));
#endif
  return p;
}

// v[u] = t[b, y, x0 + u, c] for u < min(valid, S), else 0: one channel of a strip from global memory
// (c is an element offset: a channel, or a level times the gates' level stride).
template <typename T, int S>
FF_HD void load_strip(const View& t, int b, int y, int x0, int64_t c, int valid, float (&v)[S]) {
  const T* in = static_cast<const T*>(t.ptr) + t.at(b, y, x0) + c;
  if (valid >= S) {
FF_UNROLL
    for (int u = 0; u < S; ++u) v[u] = to_float(in[u * t.sx]);
  } else {
FF_UNROLL
    for (int u = 0; u < S; ++u, in = next_pixel(in, t.sx)) v[u] = u < valid ? to_float(*in) : 0.f;
  }
}

// The gates [B, H, W, L + 1] as a View of pixels; level l is at element offset l * g.sl.
FF_HD View gates_as_view(const GateView& g) {
  View v;
  v.ptr = const_cast<void*>(g.ptr);
  v.sb = g.sb;
  v.sy = g.sy;
  v.sx = g.sx;
  v.sy_bytes = g.sy_bytes;
  return v;
}

// t[b, y, x0 + u, c] = scale * v[u] for u < min(valid, S): one channel of a strip to global memory.
template <typename T, int S>
FF_HD void store_strip(const View& t, int b, int y, int x0, int c, int valid, float scale, const float (&v)[S]) {
  T* out = static_cast<T*>(t.ptr) + t.at(b, y, x0) + c;
  if (valid >= S) {
FF_UNROLL
    for (int u = 0; u < S; ++u) out[u * t.sx] = from_float<T>(scale * v[u]);
  } else {
FF_UNROLL
    for (int u = 0; u < S; ++u, out = next_pixel(out, t.sx)) {
      if (u < valid) *out = from_float<T>(scale * v[u]);
    }
  }
}

// A row of a sweep band (SweepBand::row): image b's row y, and whether that is a row of one of the band's images
// (rows outside them read as zeros).
struct SweepRow {
  int b, y;
  bool inside;
};

// A row of ctx (T, [B, H, W, C]; ctx_row: the view from that row on) at one strip of one channel into a ring row (dst:
// its pixel x0): channel c of the block's chunk, columns x0 .. x0 + S - 1; zeros outside the band's images (inside
// false) and past cn. S 2-byte global loads
// and converts, S / 4 16-byte shared stores.
template <typename T, int S = kStrip>
FF_HD void load_ctx_strip(const View& ctx_row, float* dst, int c, int x0, bool inside, int W, int c_begin, int cn) {
  float v[S];
  load_strip<T>(ctx_row, 0, 0, x0, c_begin + c, inside && c < cn ? W - x0 : 0, v);
  store_run(dst, v);
}

// Runs the statement (the macro's other arguments) with the compile-time constant K = k for an odd kernel
// size k <= kMaxKernelSize (the binding checks k; any other value runs nothing).
#define FF_WITH_KERNEL_SIZE(k, ...)                      \
  switch (k) {                                           \
    case 1: { constexpr int K = 1; __VA_ARGS__; } break;   \
    case 3: { constexpr int K = 3; __VA_ARGS__; } break;   \
    case 5: { constexpr int K = 5; __VA_ARGS__; } break;   \
    case 7: { constexpr int K = 7; __VA_ARGS__; } break;   \
    case 9: { constexpr int K = 9; __VA_ARGS__; } break;   \
    case 11: { constexpr int K = 11; __VA_ARGS__; } break; \
    case 13: { constexpr int K = 13; __VA_ARGS__; } break; \
    default: break;                                      \
  }

// The kernel sizes of a sweep's levels as its code sees them:
//   FixedChain<K0, L>  k_l = K0 + 2 l (FocalNet's rule; every published configuration is K0 = 3, L = 1..4), known
//                      at compile time: the level loops unroll, each level's taps are its own code, and l is
//                      passed as a LevelIndex (a compile-time int: taps_before(l) as a constant);
//   GenericChain       any sizes, read from SweepLevels at run time: each level picks its code by a switch over k.
// Chain::levels(lv) is L; Chain::size(lv, l) is k_l, 1 past the last level (a constant in a FixedChain);
// Chain::with_first_size(lv, f) calls f(std::integral_constant<int, k_0>{});
// Chain::for_each_level<kShift, kReverse>(lv, f) calls f(l, std::integral_constant<int, K>{}) (l an int or a
// LevelIndex) for l = 0 .. L-1 (kReverse: L-1 .. 0) with K = k_{l + kShift}, or 1 past the last level;
// Chain::is_last(lv, l) says whether l is L-1 (a LevelFlag for a LevelIndex, else a bool), for if_level.
// A level index known at compile time that converts to int in host and device code (std::integral_constant's
// conversion is host-only).
template <int I>
struct LevelIndex {
  static constexpr int value = I;
  FF_HD constexpr operator int() const { return I; }
};
// A fact about a level known at compile time (a FixedChain's).
template <bool B>
struct LevelFlag {};

// Runs then() where a level's flag holds, else otherwise(): a LevelFlag picks one at compile time (no branch in the
// SASS, and none the static cost report's host path counts: a level's copy of the code is the same on every
// iteration); a bool (GenericChain) is an `if`.
struct NoCode {
  FF_HD void operator()() const {}
};
template <bool B, class Then, class Else = NoCode>
FF_HD void if_level(LevelFlag<B>, Then&& then, Else&& otherwise = {}) {
  if constexpr (B) {
    then();
  } else {
    otherwise();
  }
}
template <class Then, class Else = NoCode>
FF_HD void if_level(bool flag, Then&& then, Else&& otherwise = {}) {
  if (flag) {
    then();
  } else {
    otherwise();
  }
}

template <int K0, int kLevels>
struct FixedChain {
  static constexpr bool kFixed = true;
  static constexpr int kLevelCount = kLevels;
  static FF_HD constexpr int levels(const SweepLevels&) { return kLevels; }
  static FF_HD constexpr int size(int l) { return l < kLevels ? K0 + 2 * l : 1; }
  static FF_HD constexpr int size(const SweepLevels&, int l) { return size(l); }
  static FF_HD constexpr int taps_before(int l) { return l == 0 ? 0 : taps_before(l - 1) + size(l - 1) * size(l - 1); }
  template <int I>
  static FF_HD constexpr LevelFlag<I + 1 == kLevels> is_last(const SweepLevels&, LevelIndex<I>) {
    return {};
  }

  template <class F>
  static FF_HD void with_first_size(const SweepLevels&, F&& f) {
    f(std::integral_constant<int, K0>{});
  }
  template <int kShift, bool kReverse, class F>
  static FF_HD void for_each_level(const SweepLevels&, F&& f) {
    visit<kShift, kReverse>(f, std::make_integer_sequence<int, kLevels>{});
  }
  template <int kShift, bool kReverse, class F, int... I>
  static FF_HD void visit(F& f, std::integer_sequence<int, I...>) {
    (f(LevelIndex<kReverse ? kLevels - 1 - I : I>{},
       std::integral_constant<int, size((kReverse ? kLevels - 1 - I : I) + kShift)>{}),
     ...);
  }
};

struct GenericChain {
  static constexpr bool kFixed = false;
  static FF_HD int levels(const SweepLevels& lv) { return lv.L; }
  static FF_HD int size(const SweepLevels& lv, int l) {  // 1 past the last level
    return l < lv.L && l < kMaxFocalLevel ? lv.k[l] : 1;
  }
  static FF_HD bool is_last(const SweepLevels& lv, int l) { return l + 1 == lv.L; }

  template <class F>
  static FF_HD void with_first_size(const SweepLevels& lv, F&& f) {
    FF_WITH_KERNEL_SIZE(lv.k[0], f(std::integral_constant<int, K>{}));
  }
  template <int kShift, bool kReverse, class F>
  static FF_HD void for_each_level(const SweepLevels& lv, F&& f) {
    for (int n = 0; n < lv.L; ++n) {
      const int l = kReverse ? lv.L - 1 - n : n;
      FF_WITH_KERNEL_SIZE(l + kShift < lv.L ? lv.k[l + kShift] : 1, f(l, std::integral_constant<int, K>{}));
    }
  }
};

// Calls f(Chain{}) with the FixedChain of lv's kernel sizes where there is one (K0 = 3, L = 1..4), else GenericChain.
template <class F>
void dispatch_chain(const SweepLevels& lv, F&& f) {
  bool focalnet = lv.L >= 1;
  for (int l = 0; l < lv.L; ++l) focalnet = focalnet && lv.k[l] == 3 + 2 * l;
  if (focalnet) {
    switch (lv.L) {
      case 1: return f(FixedChain<3, 1>{});
      case 2: return f(FixedChain<3, 2>{});
      case 3: return f(FixedChain<3, 3>{});
      case 4: return f(FixedChain<3, 4>{});
    }
  }
  f(GenericChain{});
}

// The images, rows and chunk of channels of a sweep block (block = band * chunks + chunk). A band is either rows
// [y0, y1) of one image b (stack 1; several bands an image when the images are too few to fill the GPU), or `stack`
// whole images b, b + 1, ... (the last band: those left) swept as one tall image, so that a band's sweep pays the
// halo of its lags once, not once an image (context_bwd's small maps). In a stack, row y of image b + i is the band's
// row v = i * period + y, period = H + gap (stack_period: gap >= 1): the gap's rows are outside every image (zeros, as
// the rows around a single image), and with gap >= the chain's largest conv radius no conv reaches from one image
// into the next.
// A band [y0, y1) is swept from a halo of rows (the sweep's largest lag) before its first row in the sweep's
// direction and writes rows y0 .. y1 - 1 of its images only: why that is exact is in focalfast/ops/sweep_geometry.py.
struct SweepBand {
  int b, images, H, y0, y1, c_begin, cn, chunk_index, index;
  int period = 0;                            // band rows from one image to the next (stacks)
  unsigned magic = 0, row_bias = 0, image_bias = 0;  // row(): 0 but in stacks

  FF_HD SweepBand(int block, const Geometry& geo, int band_rows, int stack, int gap, int chunk) : H(geo.H) {
    const int chunks = int(ceil_div(geo.C, chunk));
    chunk_index = block % chunks;
    index = block / chunks;
    if (stack > 1) {
      b = index * stack;
      images = min_int(stack, geo.B - b);
      y0 = 0;
      y1 = geo.H;
      period = stack_period(geo.H, gap);
      magic = 0xFFFFFFFFu / unsigned(period) + 1u;
      image_bias = unsigned(kSlotBias);
      row_bias = image_bias * unsigned(period);
    } else {
      const int bands = int(ceil_div(geo.H, band_rows));
      b = index / bands;
      images = 1;
      y0 = index % bands * band_rows;
      y1 = min_int(y0 + band_rows, geo.H);
    }
    c_begin = chunk_index * chunk;
    cn = min_int(chunk, geo.C - c_begin);
  }
  // The band's row v: image b's row v, or in a stack (kStacked; v >= -kSlotBias) image b + q's row v - q period, q =
  // floor(v / period) by a direct quotient, mul_high(v + kSlotBias period, magic) - kSlotBias with magic = ceil(2^32 /
  // period), exact while (v + kSlotBias period) period < 2^32 (the binding checks its stacks' rows). A sweep that
  // never stacks is compiled without the quotient (two instructions a row instead of seven).
  template <bool kStacked>
  FF_HD SweepRow row(int v) const {
    if constexpr (kStacked) {
      const int q = int(mul_high(unsigned(v) + row_bias, magic) - image_bias), y = v - q * period;
      return {b + q, y, unsigned(q) < unsigned(images) && unsigned(y) < unsigned(H)};
    } else {
      return {b, v, unsigned(v) < unsigned(H)};
    }
  }
  FF_HD bool owns(int y) const { return y >= y0 && y < y1; }  // of image b (one-image bands)
  FF_HD bool owns(const SweepRow& r) const { return r.inside && r.y >= y0 && r.y < y1; }
  FF_HD int64_t partial_row() const { return index; }
};

// Threads of a sweep block: one per item of the conv phases (strips x chunk), whole warps, 64 to kSweepThreads.
inline int sweep_threads(int W, int chunk) {
  const int warps = (strip_width(W) / kStrip * chunk + 31) / 32;
  return min_int(kSweepThreads, 32 * (warps < 2 ? 2 : warps));
}

// Runs Op::run(args, block, smem) for every block: a GPU grid of `threads`-thread blocks with `smem_bytes` of
// dynamic shared memory, or the blocks in order on the host (the array is zeroed by the kernel itself).
// Op::Args (the parameters and the shared-memory layout, computed on the host) is a __grid_constant__
// kernel argument: indexing its per-level arrays with a runtime level reads the constant bank (LDC), no
// copy on the stack.
extern __shared__ float4 sweep_smem[];

// The blocks per SM an Op asks ptxas to plan registers for: Op::kMinBlocksPerSm where it declares one, else 0 (no
// request: ptxas' own choice, the same code as __launch_bounds__(kSweepThreads)).
template <class Op, class = void>
constexpr int kSweepMinBlocks = 0;
template <class Op>
constexpr int kSweepMinBlocks<Op, std::void_t<decltype(Op::kMinBlocksPerSm)>> = Op::kMinBlocksPerSm;

template <class Op>
__global__ void __launch_bounds__(kSweepThreads, kSweepMinBlocks<Op>) sweep_kernel(const __grid_constant__ typename Op::Args args) {
  Op::run(args, int(blockIdx.x), reinterpret_cast<float*>(sweep_smem));
}

template <class Op>
void launch_sweep(const typename Op::Args& args, int blocks, int threads, int64_t smem_bytes, const Stream& stream) {
  if (blocks <= 0) return;
  if (stream.record) return record_launch<Op>(blocks, threads, smem_bytes);
  if (stream.on_host) {
    std::vector<float> smem(size_t(smem_bytes / 4));
    for (int block = 0; block < ceil_div(blocks, stream.host_sample); ++block) Op::run(args, block, smem.data());
    return;
  }
  check_cuda(cudaFuncSetAttribute(sweep_kernel<Op>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)),
             Op::kName);
  sweep_kernel<Op><<<unsigned(blocks), unsigned(threads), size_t(smem_bytes), stream.stream>>>(args);
  check_cuda(cudaGetLastError(), Op::kName);
}

}  // namespace focalfast
