// Host-side interface of the focal-modulation kernels: tensor views, launch parameters, launchers.
//
// Plain CUDA, no torch headers. The pybind11 binding (focal_modulation.cpp) checks the arguments and
// fills these structs; the kernels are in focal_modulation_fwd.cu and focal_modulation_bwd.cu.
//
// Notation (docs/design.md, "The math"), per image b, pixel p, channel c, L levels, s = 1/(L+1) or 1:
//   z_0 = ctx,   pre_l = dwconv_l(z_l) (zero padding),   z_{l+1} = GELU(pre_l)
//   ctx_local = s * sum_l gates_l * z_{l+1}              (stored in the input dtype T: the GEMM's A)
//   G = GELU(mean_p z_L)                                  ([B, C], fp32)
//   out = q * (ctx_local W^T + bias + s * gates_L * (G W^T))   (the GEMM adds the bias)
// Everything is accumulated in fp32; scratch tensors are fp32 and contiguous [B, H, W, C].
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

// Kernel bodies are __host__ __device__: the same code runs on the GPU and, for tests on machines
// without one, serially on the CPU (Stream::on_host).
#define FF_HD __host__ __device__ __forceinline__

namespace focalfast {

constexpr int kGroup = 8;  // channels per thread: one 16-byte vector of fp16/bf16, two of fp32
constexpr int kMaxKernelSize = 13;
constexpr int kMaxFocalLevel = 4;
constexpr int kMaxGridItems = (1 << 30) - 1;  // threads along a row of a grid (focal_modulation_common.cuh)
constexpr int kMaxSweepRows = 1 << 24;  // taller images take the level-at-a-time kernels (RowRing::slot)
constexpr int kSlotBias = 64;  // more than any lag of a sweep (2R <= 48); kMaxSweepRows: 2^24 + 64 * 49 < 2^32 / 49

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct Geometry {
  int B, H, W, C;
  FF_HD int64_t pixels() const { return int64_t(H) * W; }
  FF_HD int groups() const { return (C + kGroup - 1) / kGroup; }
};

// Bands of a sweep over the batch (SweepBand): stacks of `stack` whole images (stack > 1), else ceil(H / band_rows)
// bands an image.
FF_HD int64_t sweep_band_count(const Geometry& geo, int band_rows, int stack) {
  return stack > 1 ? (int64_t(geo.B) + stack - 1) / stack
                   : int64_t(geo.B) * ((int64_t(geo.H) + band_rows - 1) / band_rows);
}

// Band rows from one image of a stack to the next (SweepBand): H and a gap of zero rows, at least the chain's largest
// conv radius (no conv reaches from one image into the next) and at least one row (a period >= 2, whose band-decode
// magic ceil(2^32 / period) fits 32 bits: one-row images of 1x1 kernels stack too).
FF_HD int stack_period(int H, int gap) { return H + (gap > 1 ? gap : 1); }

// A tensor indexed by (b, y, x, channel) with contiguous channels; strides in elements. Tensors of
// fewer dims fill (b, y, x) from the left, the rest stride 0: weights [k, k, C] are indexed (i, j, 0),
// per-image vectors [B, C] (b, 0, 0), bias [C] (0, 0, 0), strip partials [B, strips, C] (b, strip, 0).
struct View {
  void* ptr = nullptr;  // nullptr: an optional tensor that is absent
  int64_t sb = 0, sy = 0, sx = 0;
  int64_t sy_bytes = 0;  // sy in bytes, from the host: a RowCursor's step is one 64-bit add of it
  bool aligned = false;  // C % 8 == 0 and every 8-channel group is 16-byte aligned: vector access
  FF_HD int64_t at(int64_t b, int64_t y, int64_t x) const { return b * sb + y * sy + x * sx; }
};

// Gates [B, H, W, L + 1]: one scalar per pixel and level, any strides.
struct GateView {
  const void* ptr = nullptr;
  int64_t sb = 0, sy = 0, sx = 0, sl = 0;
  int64_t sy_bytes = 0;  // sy in bytes (as View's)
  int L = 0;  // focal levels; gates[..., L] is the global level's gate
};

// Where to run: a CUDA stream, or serially on the host (CPU tensors; tests without a GPU).
// A launch as the static cost report sees it (Stream::record): the kernel body Op, its grid and block.
struct LaunchRecord {
  std::string name, op;  // Op::kName and the demangled Op type, e.g. "focalfast::(anonymous namespace)::Foo<float>"
  int64_t blocks;
  int threads;
  int64_t smem_bytes;  // dynamic shared memory per block
};

inline std::vector<LaunchRecord>& recorded_launches() {
  static std::vector<LaunchRecord> launches;
  return launches;
}

struct Stream {
  cudaStream_t stream = nullptr;
  bool on_host = false;
  bool record = false;  // record each launch (recorded_launches) instead of running it: the static cost report
  int64_t host_sample = 1;  // on the host, run only the first 1/host_sample of the threads or blocks (loop counts)
};

// One focal level forward: z_out = GELU(conv(z_in)), acc_out = acc_in + gates_l * z_out; at the last
// level ctx_out = scale * acc and pool_partial[b, strip] = sum over the strip's pixels of z_out.
struct ConvLevelFwdParams {
  Geometry geo;
  DType dtype;      // T: gates and ctx_out
  bool z_in_fp32;   // z_in is an fp32 scratch level (else ctx, in T)
  View z_in;        // [B, H, W, C]
  View weight;      // fp32 [k, k, C]
  int k;
  GateView gates;
  int level;
  float scale;
  View acc_in;        // fp32 [B, H, W, C] or absent (level 0)
  View acc_out;       // fp32 [B, H, W, C] or absent (last level)
  View z_out;         // fp32 [B, H, W, C] or absent
  View ctx_out;       // T [B, H, W, C] or absent
  View pool_partial;  // fp32 [B, ceil(H / strip) * W, C] or absent: strip j * W + x is column x of band j
  int strip;          // pixels per thread: `strip` rows of one column
};

// What makes the modulator h(ctx_all) = linear + scale * gates_L * global_term,
// with linear = ctx_local W^T + bias (cuBLAS, the bias in its epilogue) and global_term = G W^T.
struct ModulatorArgs {
  View linear;       // T [B, H, W, C]
  View global_term;  // fp32 [B, C]
  GateView gates;
  float scale;
};

// out = q * modulator. A thread takes one channel group of one column of `rows` image rows (a band). The forward's
// out, and the backward's grad_q (grad_out as q); out may be linear itself (a thread reads a pixel's linear
// before it writes that pixel's out).
struct OutputFwdParams {
  Geometry geo;
  DType dtype;
  View q;  // T [B, H, W, C]
  ModulatorArgs mod;
  View out;  // T [B, H, W, C]
  int rows;  // rows per thread
};

// grad_modulator = grad_out * q and per thread (one channel group of column x of band j: `rows` image rows) the
// fp32 partial sums over its pixels, strip s = j * W + x: partial[b, s, 0] = sum grad_modulator,
// partial[b, s, 1] = sum gates_L * grad_modulator. It needs no modulator: the backward starts with it, before
// anything has recomputed ctx_local (grad_q = grad_out * modulator is output_fwd's, with grad_out as its q).
struct OutputBwdParams {
  Geometry geo;
  DType dtype;
  View grad_out, q;  // T [B, H, W, C]
  GateView gates;
  View grad_modulator;  // T [B, H, W, C]
  View partial;         // fp32 [B, ceil(H / rows) * W, 2, C]
  int rows;             // rows per thread
};

// One focal level backward, levels L-1 down to 0:
//   dz_{l+1} = scale * gates_l * grad_ctx_all + (l == L-1 ? grad_mean : conv_adjoint_{l+1}(grad_pre_next))
//   grad_pre = dz_{l+1} * GELU'(pre_l)                     (pre_l recomputed from z_in)
//   gate_partial[b, y, x, l, group] = scale * sum_group grad_ctx_all * z_{l+1}
//   gate_partial[b, y, x, L, group] = scale * sum_group grad_ctx_all * G   (l == L-1)
struct ConvLevelBwdParams {
  Geometry geo;
  DType dtype;
  bool z_in_fp32;
  View z_in;    // [B, H, W, C]
  View weight;  // fp32 [k, k, C]
  int k;
  GateView gates;
  int level;
  float scale;
  View grad_ctx_all;   // T [B, H, W, C]
  View grad_mean;      // fp32 [B, C]: dLoss/dmean / (H W), at level L-1; else absent
  View pooled;         // fp32 [B, C]: G, at level L-1; else absent
  View grad_pre_next;  // fp32 [B, H, W, C]: level l+1's grad_pre, below level L-1; else absent
  View weight_next;    // fp32 [k_next, k_next, C]
  int k_next;
  View grad_pre;        // fp32 [B, H, W, C]
  float* gate_partial;  // fp32 [B, H, W, L + 1, groups], contiguous
};

// Depthwise weight gradient, split reduction: partial[b * row_strips + r, i, j, c] =
// sum over the pixels of rows [r * rows, (r + 1) * rows) of grad_pre[p, c] * z_in[p + (i - k/2, j - k/2), c].
struct WeightGradParams {
  Geometry geo;
  DType z_dtype;  // z_in's: ctx's dtype at level 0, fp32 above
  View z_in;      // [B, H, W, C]
  View grad_pre;  // fp32 [B, H, W, C]
  View partial;   // fp32 [B * row_strips, k, k, C]
  int k;
  int rows;
};

// grad_in = conv_adjoint(grad_pre): the gradient of level 0's input, ctx.
struct ConvAdjointParams {
  Geometry geo;
  DType dtype;
  View grad_pre;  // fp32 [B, H, W, C]
  View weight;    // fp32 [k, k, C]
  int k;
  View grad_in;  // T [B, H, W, C]
};

// out[o, m] = scale * sum_r in[o * so + r * sr + m * sm], summed in order r = 0, 1, ...
struct ReduceParams {
  const float* in;
  float* out;  // contiguous [outer, cols]
  int outer, rows, cols;  // each at most kMaxGridItems (the binding checks)
  int64_t so, sr, sm;
  float scale;
};

// The focal levels of a fused sweep (focal_modulation_sweep.cuh): kernel sizes k_l, radii r_l = k_l / 2,
// offsets o_l = r_0 + ... + r_{l-1}; o_L is the total halo R.
struct SweepLevels {
  int L = 0;
  int k[kMaxFocalLevel] = {};
  FF_HD int r(int l) const { return k[l] / 2; }
  FF_HD int offset(int l) const {
    int o = 0;
    for (int m = 0; m < l; ++m) o += k[m] / 2;
    return o;
  }
  FF_HD int largest_radius() const {  // max_l k_l / 2: the rows between stacked images (SweepBand)
    int r = 0;
    for (int m = 0; m < L; ++m) r = k[m] / 2 > r ? k[m] / 2 : r;
    return r;
  }
  FF_HD int taps_before(int l) const {  // level l's first row in the concatenated [sum k^2, C] weights
    int t = 0;
    for (int m = 0; m < l; ++m) t += k[m] * k[m];
    return t;
  }
  FF_HD int taps() const { return taps_before(L); }
};

// The fused forward of the context part, one block per (image, band of rows, chunk of channels), rows top
// to bottom:
//   ctx_local = scale * sum_l gates_l * z_{l+1}          (T [B, H, W, C])
//   pooled_sum[b * bands + band, c] = sum_p z_L[b, p, c]  (fp32 [B * bands, C], optional; p in the band)
// The levels live in shared-memory rings only; nothing per level touches global memory. With bands
// (band_rows < H: images too few to fill the GPU) a block starts its sweep a halo of rows above its band
// and recomputes it (see SweepBand in focal_modulation_sweep.cuh).
struct ContextFwdParams {
  Geometry geo;
  DType dtype;
  SweepLevels levels;
  int chunk;       // channels per block, a multiple of kGroup
  int band_rows;   // image rows per block (H: whole images)
  View ctx;        // T [B, H, W, C]
  View weights;    // fp32 [sum_l k_l^2, C], tap-major, the levels concatenated
  GateView gates;
  float scale;
  View ctx_local;   // T [B, H, W, C]
  View pooled_sum;  // fp32 [B * bands, C] or absent
};

// The fused backward of the context part, one block per (band, chunk), rows bottom to top; a band is rows of one
// image, or `stack` whole images swept as one (SweepBand). It recomputes the levels from ctx in the same sweep and
// runs the adjoint chain a few rows behind:
//   ctx_local = scale * sum_l gates_l * z_{l+1}  T [B, H, W, C] (as context_fwd's: the h GEMMs' operand)
//   grad_ctx                                    T [B, H, W, C]
//   weight_partial[band, tap, c] = sum over the band's pixels of grad_pre_l * z_l (shifted)
//       fp32 [bands, taps, C]; bands: B * ceil(H / band_rows), or ceil(B / stack) for stacks
//   gate_partial[b, y, x, l, column] = scale * sum over the column's channels (a group of kGroup, or a chunk in
//       stacks: gate_partial_columns) of grad_ctx_all * z_{l+1} (l < L), grad_ctx_all * G (l = L)
//       fp32 [B, H, W, L + 1, columns]
struct ContextBwdParams {
  Geometry geo;
  DType dtype;
  SweepLevels levels;
  int chunk;
  int band_rows;
  int stack;      // whole images per band (band_rows H), or 1
  View ctx;      // T [B, H, W, C]
  View weights;  // fp32 [taps, C]
  GateView gates;
  float scale;
  View grad_ctx_all;  // T [B, H, W, C]: (grad_out * q) W
  View grad_mean;     // fp32 [B, C]: dLoss / d mean_p z_L, divided by H W
  View pooled;        // fp32 [B, C]: G
  View ctx_local;       // T [B, H, W, C]
  View grad_ctx;        // T [B, H, W, C]
  View weight_partial;  // fp32 [bands, taps, C]
  float* gate_partial;  // fp32 [B, H, W, L + 1, gate_partial_columns], contiguous
};

// Shared memory of one block of the fused kernels, in bytes (the launcher checks it against the device). context_bwd's
// strip: pixels per conv item, 4 or 8 (0: its own choice, context_bwd_strip), a schedule option (tune_sweep); its
// bytes are INT64_MAX (no device has them) where a block would have more conv items (strips x chunk) than threads
// (kSweepThreads): a thread runs one item a phase.
int64_t context_fwd_smem_bytes(const SweepLevels& levels, int W, int chunk);
int64_t context_bwd_smem_bytes(const SweepLevels& levels, int W, int chunk, int strip);
int context_bwd_strip(int W, int chunk);  // its own choice of strip
// context_bwd's gate partials a pixel and level (gate_partial's last dim): one per group of kGroup channels for
// one-image bands, one per chunk for stacks of small images (ContextBwd::gate_partials).
FF_HD int gate_partial_columns(const Geometry& geo, int chunk, int stack) {
  return stack > 1 ? (geo.C + chunk - 1) / chunk : geo.groups();
}
void context_fwd(const ContextFwdParams& p, const Stream& stream);
void context_bwd(const ContextBwdParams& p, int strip, const Stream& stream);

void conv_level_fwd(const ConvLevelFwdParams& p, const Stream& stream);
void output_fwd(const OutputFwdParams& p, const Stream& stream);
void reduce_sum(const ReduceParams& p, const Stream& stream);
void output_bwd(const OutputBwdParams& p, const Stream& stream);
void conv_level_bwd(const ConvLevelBwdParams& p, const Stream& stream);
void weight_grad(const WeightGradParams& p, const Stream& stream);
void conv_adjoint(const ConvAdjointParams& p, const Stream& stream);

}  // namespace focalfast
