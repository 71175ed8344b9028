// The row-streaming sweep shared by the fused forward (context_fwd) and backward (context_bwd) kernels.
//
// One CUDA block owns one image b and one chunk of `chunk` channels (a multiple of 8) and sweeps the
// image rows once, keeping the few rows that each level still needs in shared-memory rings. A level
// whose row y is produced at step t "lags" the sweep by t - y rows (forward, top to bottom) or y - (H-1-t)
// rows (backward, bottom to top); a ring of depth D holds the last D rows produced, row y in slot y mod D.
// Ring rows are fp32, [width][chunk] with the channels fastest, and padded left and right by the
// radius of the conv that reads them, so the padding columns stay zero for the whole sweep.
//
// The block body is written as a sequence of phases separated by barriers:
//     FF_FOR_EACH(item, count) { ...one item... }  FF_BARRIER();
// Within a phase no item reads what another item of the same phase writes. On the GPU the items are
// spread over the block's threads; on the host (CPU tensors: tests without a GPU) they run in order,
// one block after the other, with shared memory as a host array. Both orders give the same result.
#pragma once

#include <vector>

#include "focal_modulation_common.cuh"

#ifdef __CUDA_ARCH__
#define FF_FOR_EACH(item, count) for (int item = int(threadIdx.x); item < (count); item += int(blockDim.x))
#define FF_BARRIER() __syncthreads()
#else
#define FF_FOR_EACH(item, count) for (int item = 0; item < (count); ++item)
#define FF_BARRIER() ((void)0)
#endif

namespace focalfast {

constexpr int kSweepThreads = 256;

// A ring of `depth` rows of `width` pixels x `chunk` channels at smem[base ...].
struct Ring {
  int64_t base = 0;
  int depth = 1, pitch = 0;  // pitch = width * chunk floats per row

  FF_HD float* row(float* smem, int y) const {
    int slot = y % depth;
    if (slot < 0) slot += depth;
    return smem + base + int64_t(slot) * pitch;
  }
};

// Hands out consecutive float regions of shared memory.
struct SmemAllocator {
  int64_t used = 0;
  FF_HD int64_t take(int64_t floats) {
    const int64_t base = used;
    used += (floats + 3) / 4 * 4;  // keep every region 16-byte aligned
    return base;
  }
  FF_HD Ring ring(int depth, int width, int chunk) {
    Ring r;
    r.depth = depth;
    r.pitch = width * chunk;
    r.base = take(int64_t(depth) * r.pitch);
    return r;
  }
};

// A conv item computes one channel at a strip of S consecutive pixels (a sliding window in registers:
// S + k - 1 ring loads and k weight loads per kernel row for S k FMAs); ring rows are padded to whole strips.
// Items run channel fastest: a warp reads the same column offset of 32 / chunk strips, pixels S apart, of
// all `chunk` channels; with [width][chunk] rows an odd S puts them in distinct banks (even S: 2- to 4-way
// conflicts for chunks of 8 and 16).
FF_HD int strips_of(int W, int S) { return (W + S - 1) / S; }

// Eight consecutive floats of shared memory (16-byte aligned) from or to a Group: two 16-byte accesses on the GPU.
FF_HD void store8(float* dst, const Group& g) {
#ifdef __CUDA_ARCH__
  reinterpret_cast<float4*>(dst)[0] = make_float4(g.v[0], g.v[1], g.v[2], g.v[3]);
  reinterpret_cast<float4*>(dst)[1] = make_float4(g.v[4], g.v[5], g.v[6], g.v[7]);
#else
  for (int e = 0; e < kGroup; ++e) dst[e] = g.v[e];
#endif
}

FF_HD Group load8(const float* src) {
  Group g;
#ifdef __CUDA_ARCH__
  const float4 a = reinterpret_cast<const float4*>(src)[0], b = reinterpret_cast<const float4*>(src)[1];
  g = Group{{a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w}};
#else
  for (int e = 0; e < kGroup; ++e) g.v[e] = src[e];
#endif
  return g;
}

// acc[p] += sum_{i,j} w[i, j] z[y + i - r, x0 + p + j - r] for p < S: the depthwise conv of one
// channel at S consecutive pixels, z a ring padded by r = k / 2 (so padded column x0 + p + j).
// w points to the channel's tap (0, 0) in [k * k][chunk]. flip: use w[k-1-i, k-1-j], which makes this
// the adjoint conv (the gradient of the input from the gradient of the output).
template <int S>
FF_HD void conv_strip(float* smem, const Ring& z, const float* w, int k, int chunk, int y, int x0, int c, bool flip,
                      float (&acc)[S]) {
  const int r = k / 2;
  for (int i = 0; i < k; ++i) {
    const float* row = z.row(smem, y + i - r) + c;
    float window[S];
FF_UNROLL
    for (int p = 0; p < S; ++p) window[p] = row[(x0 + p) * chunk];
    for (int j = 0; j < k; ++j) {
      if (j > 0) {  // slide the window one pixel right
FF_UNROLL
        for (int p = 0; p + 1 < S; ++p) window[p] = window[p + 1];
        window[S - 1] = row[(x0 + S - 1 + j) * chunk];
      }
      const int tap = flip ? k * k - 1 - (i * k + j) : i * k + j;
      const float wv = w[tap * chunk];
FF_UNROLL
      for (int p = 0; p < S; ++p) acc[p] = fmaf(wv, window[p], acc[p]);
    }
  }
}

// The image, band of rows and chunk of channels of a sweep block (block = (b * bands + band) * chunks + chunk).
// A band [y0, y1) is swept from a halo of rows (the sweep's largest lag) before its first row in the sweep's
// direction and writes rows y0 .. y1 - 1 only: why that is exact is in focalfast/ops/sweep_geometry.py.
struct SweepBand {
  int b, band, bands, y0, y1, c_begin, cn, chunk_index;

  FF_HD SweepBand(int block, const Geometry& geo, int band_rows, int chunk) {
    const int chunks = int(ceil_div(geo.C, chunk));
    bands = int(ceil_div(geo.H, band_rows));
    chunk_index = block % chunks;
    band = block / chunks % bands;
    b = block / chunks / bands;
    y0 = band * band_rows;
    y1 = min_int(y0 + band_rows, geo.H);
    c_begin = chunk_index * chunk;
    cn = min_int(chunk, geo.C - c_begin);
  }
  FF_HD bool owns(int y) const { return y >= y0 && y < y1; }
  FF_HD int64_t partial_row() const { return int64_t(b) * bands + band; }
};

// Threads of a sweep block: one per item of the conv phases (strips x chunk), whole warps, 64 to kSweepThreads.
inline int sweep_threads(int W, int S, int chunk) {
  const int items = strips_of(W, S) * chunk;
  const int warps = (items + 31) / 32;
  return min_int(kSweepThreads, 32 * (warps < 2 ? 2 : warps));
}

// Runs Op::run(p, block, smem) for every block: a GPU grid of `threads`-thread blocks with `smem_bytes` of
// dynamic shared memory, or the blocks in order on the host (the array is zeroed by the kernel itself).
extern __shared__ float4 sweep_smem[];

template <class Op>
__global__ void __launch_bounds__(kSweepThreads) sweep_kernel(const typename Op::Params p) {
  Op::run(p, int(blockIdx.x), reinterpret_cast<float*>(sweep_smem));
}

template <class Op>
void launch_sweep(const typename Op::Params& p, int blocks, int threads, int64_t smem_bytes, const Stream& stream) {
  if (blocks <= 0) return;
  if (stream.record) return record_launch<Op>(blocks, threads, smem_bytes);
  if (stream.on_host) {
    std::vector<float> smem(size_t(smem_bytes / 4));
    for (int block = 0; block < ceil_div(blocks, stream.host_sample); ++block) Op::run(p, block, smem.data());
    return;
  }
  check_cuda(cudaFuncSetAttribute(sweep_kernel<Op>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)),
             Op::kName);
  sweep_kernel<Op><<<unsigned(blocks), unsigned(threads), size_t(smem_bytes), stream.stream>>>(p);
  check_cuda(cudaGetLastError(), Op::kName);
}

}  // namespace focalfast
