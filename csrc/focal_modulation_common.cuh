// Device-side helpers shared by the forward and backward kernels: dtype conversion, 8-channel group
// loads and stores (16-byte vectors where aligned, a bounded scalar loop otherwise), exact GELU, the
// depthwise convolution and its adjoint at one pixel, and the launcher that runs a thread body on the
// GPU or serially on the host.
//
// Thread layout of every kernel: a thread owns one group of kGroup = 8 consecutive channels
// [c0, c0 + n), n = min(8, C - c0), of some pixels. Lanes past n hold zeros and are never stored.
// Consecutive threads take consecutive groups of a pixel, so a warp's accesses are contiguous runs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cxxabi.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>

#include "focal_modulation.h"

// "#pragma unroll" for the device passes; the host compiler (tests) chooses for itself. FF_NO_UNROLL keeps a
// loop with a run-time trip count rolled: no unrolled copy, no remainder loop, no set-up code for them.
#ifdef __CUDA_ARCH__
#define FF_UNROLL _Pragma("unroll")
#define FF_NO_UNROLL _Pragma("unroll 1")
#else
#define FF_UNROLL
#define FF_NO_UNROLL
#endif

namespace focalfast {

constexpr int kThreadsPerBlock = 256;

FF_HD int min_int(int a, int b) { return a < b ? a : b; }
FF_HD int max_int(int a, int b) { return a > b ? a : b; }

#ifdef __CUDA_ARCH__
// v through an opaque register move: the compiler cannot recompute it from its inputs, so a value computed once
// (a thread's place in a sweep) stays in a register instead of being rematerialised at every use.
__device__ __forceinline__ int kept(int v) {
  int r;
  asm volatile("mov.b32 %0, %1;" : "=r"(r) : "r"(v));
  return r;
}
#endif
FF_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

FF_HD float to_float(float v) { return v; }
FF_HD float to_float(__half v) { return __half2float(v); }
FF_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
FF_HD T from_float(float v);
template <>
FF_HD float from_float<float>(float v) { return v; }
template <>
FF_HD __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
FF_HD __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The fp32 value with these bits (a bf16 is the high half of an fp32).
FF_HD float bits_to_float(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

// The bits of an fp32 value (free on the GPU): bits_to_float's inverse.
FF_HD uint32_t float_to_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

// The high 32 bits of the 64-bit product a * b (one IMAD.HI on the GPU).
FF_HD unsigned mul_high(unsigned a, unsigned b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return unsigned((uint64_t(a) * uint64_t(b)) >> 32);
#endif
}

// Eight fp32 channel values of one pixel.
struct Group {
  float v[kGroup];
};

// 16 bytes of T: the unit of a vector load or store.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <typename T>
FF_HD Vec16<T> load_vec16(const T* p) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const Vec16<T>*>(p);
#else
  Vec16<T> r;
  std::memcpy(static_cast<void*>(&r), p, sizeof(r));
  return r;
#endif
}

template <typename T>
FF_HD void store_vec16(T* p, const Vec16<T>& r) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<Vec16<T>*>(p) = r;
#else
  std::memcpy(static_cast<void*>(p), &r, sizeof(r));
#endif
}

// How a thread reaches the 8 channels [c0, c0 + n) of a pixel: one 16-byte vector (aligned, n == 8), eight
// scalars (n == 8, any alignment: no bounds test), or the first n scalars (n < 8). Kernels that loop over
// pixels take it as a template parameter, chosen once per launch: their loop bodies hold no branch, and a kernel
// holds only the row loop it runs.
enum class Access { kVector, kScalar, kBounded };
template <Access A>
using AccessTag = std::integral_constant<Access, A>;

// Channels [c0, c0 + n) of p (already offset to c0) as fp32; zeros past n.
template <Access A, typename T>
FF_HD Group load_channels(const T* p, int n) {
  Group g;
  if (A == Access::kVector && std::is_same<T, __nv_bfloat16>::value) {  // a shift or a mask per channel
    const Vec16<uint32_t> r = load_vec16(reinterpret_cast<const uint32_t*>(p));
FF_UNROLL
    for (int k = 0; k < kGroup / 2; ++k) {
      g.v[2 * k] = bits_to_float(r.v[k] << 16);
      g.v[2 * k + 1] = bits_to_float(r.v[k] & 0xFFFF0000u);
    }
  } else if (A == Access::kVector) {
    constexpr int kVec = Vec16<T>::kSize;
FF_UNROLL
    for (int k = 0; k < kGroup; k += kVec) {
      const Vec16<T> r = load_vec16(p + k);
FF_UNROLL
      for (int e = 0; e < kVec; ++e) g.v[k + e] = to_float(r.v[e]);
    }
  } else {
FF_UNROLL
    for (int e = 0; e < kGroup; ++e) g.v[e] = A == Access::kScalar || e < n ? to_float(p[e]) : 0.f;
  }
  return g;
}

template <Access A, typename T>
FF_HD void store_channels(T* p, int n, const Group& g) {
  if (A == Access::kVector) {
    constexpr int kVec = Vec16<T>::kSize;
FF_UNROLL
    for (int k = 0; k < kGroup; k += kVec) {
      Vec16<T> r;
FF_UNROLL
      for (int e = 0; e < kVec; ++e) r.v[e] = from_float<T>(g.v[k + e]);
      store_vec16(p + k, r);
    }
  } else {
FF_UNROLL
    for (int e = 0; e < kGroup; ++e) {
      if (A == Access::kScalar || e < n) p[e] = from_float<T>(g.v[e]);
    }
  }
}

// The same with the access chosen at run time (aligned: vector, else bounded scalars).
template <typename T>
FF_HD Group load_group(const T* p, int n, bool aligned) {
  if (aligned) return load_channels<Access::kVector>(p, n);
  return load_channels<Access::kBounded>(p, n);
}

template <typename T>
FF_HD void store_group(T* p, int n, bool aligned, const Group& g) {
  if (aligned) {
    store_channels<Access::kVector>(p, n, g);
  } else {
    store_channels<Access::kBounded>(p, n, g);
  }
}

// The group of channels starting at c0 of pixel (b, y, x) of a view holding T.
template <typename T>
FF_HD Group load_at(const View& t, int64_t b, int64_t y, int64_t x, int c0, int n) {
  return load_group(static_cast<const T*>(t.ptr) + t.at(b, y, x) + c0, n, t.aligned);
}

template <typename T>
FF_HD void store_at(const View& t, int64_t b, int64_t y, int64_t x, int c0, int n, const Group& g) {
  store_group(static_cast<T*>(t.ptr) + t.at(b, y, x) + c0, n, t.aligned, g);
}

template <typename T>
FF_HD float load_gate(const GateView& g, int b, int y, int x, int level) {
  return to_float(static_cast<const T*>(g.ptr)[b * g.sb + y * g.sy + x * g.sx + level * g.sl]);
}

// One special-function-unit instruction on the GPU (about 2 ulp, denormals flushed): 2^x; exact on the host.
FF_HD float exp2_approx(float x) {
#ifdef __CUDA_ARCH__
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return std::exp2(x);
#endif
}

// The lower tail Phi(-a) of the standard normal CDF for a >= 0, from one exp2:
//   2 Phi(-a) = erfc(a / sqrt 2) = 2^q(a),  q a degree-8 polynomial with q(0) = 0,
// fitted to log2 erfc(a / sqrt 2) with errors weighted by erfc (Lawson-iterated least squares on [0, 5.6]);
// the same polynomial as the Triton kernels' (focalfast/ops/triton/gelu.py). In fp32 against float64:
// |Phi - exact| < 8e-8 for every x, GELU's relative error below 3e-6 for |x| < 3 (degree 9 gained nothing on
// either: 5.4e-8 / 1.7e-6 against 5.7e-8 / 2.8e-6).
// q's leading coefficient is negative and q falls monotonically past 5.6, so no cap on a: there 2^q / 2 < 1.1e-8 and
// |a (2^q / 2 - Phi(-a))| < 4e-9 (it goes to 0; a = inf gives 0). 9 instructions on the GPU: 8 FFMA (the last one
// folds the halving in: q a - 1) and MUFU.EX2.

FF_HD float lower_tail(float a) {
  float q = -2.834909724334263e-06f;
  q = fmaf(q, a, 3.93776559847661e-05f);
  q = fmaf(q, a, -0.00018618008300445068f);
  q = fmaf(q, a, -0.00013693672502134818f);
  q = fmaf(q, a, 0.00706342055121138f);
  q = fmaf(q, a, -0.05249617860783907f);
  q = fmaf(q, a, -0.4592081965885714f);
  q = fmaf(q, a, -1.1511052053094868f);
  return exp2_approx(fmaf(q, a, -1.f));  // 2^q / 2
}

// GELU(x) = x Phi(x) (the exact, erf-based GELU) = max(x, 0) - |x| Phi(-|x|): no select, |x| an operand modifier.
// About 11 instructions. x = +-inf gives NaN (inf times a zero tail), as GELU'(x) does; PyTorch gives inf and NaN.
FF_HD float gelu(float x) {
  const float a = fabsf(x);
  return fmaxf(x, 0.f) - a * lower_tail(a);
}

constexpr float kNegHalfLog2E = -0.72134752044448170f;  // -log2(e) / 2: exp(-x^2 / 2) = 2^(this x^2)
constexpr float kLog2InvSqrt2Pi = -1.3257480647361593f;  // log2(1 / sqrt(2 pi))

// GELU(x) and GELU'(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) = 2^(x^2 kNegHalfLog2E +
// kLog2InvSqrt2Pi) (the constant in the exponent: an FFMA, not a multiply more), from one Phi: two exp2s.
FF_HD void gelu_and_grad(float x, float& value, float& grad) {
  const float tail = lower_tail(fabsf(x));
  const float cdf = x < 0.f ? tail : 1.f - tail;
  value = x * cdf;
  grad = fmaf(x, exp2_approx(fmaf(x * x, kNegHalfLog2E, kLog2InvSqrt2Pi)), cdf);
}

// pre[c] = sum_{i,j} w[i, j, c] * z[b, y + i - r, x + j - r, c], r = k / 2, zero outside the image.
template <typename Z>
FF_HD Group depthwise_conv(const View& z, const View& w, int k, const Geometry& geo, int b, int y,
                           int x, int c0, int n) {
  const int r = k / 2;
  Group acc = {};
  for (int i = 0; i < k; ++i) {
    const int yy = y + i - r;
    if (yy < 0 || yy >= geo.H) continue;
    for (int j = 0; j < k; ++j) {
      const int xx = x + j - r;
      if (xx < 0 || xx >= geo.W) continue;
      const Group zv = load_at<Z>(z, b, yy, xx, c0, n);
      const Group wv = load_at<float>(w, i, j, 0, c0, n);
FF_UNROLL
      for (int e = 0; e < kGroup; ++e) acc.v[e] = fmaf(wv.v[e], zv.v[e], acc.v[e]);
    }
  }
  return acc;
}

// The adjoint of depthwise_conv: dz[c] = sum_{i,j} w[i, j, c] * d[b, y - i + r, x - j + r, c] over
// the output pixels inside the image (a padded input pixel feeds no output).
FF_HD Group depthwise_conv_adjoint(const View& d, const View& w, int k, const Geometry& geo, int b,
                                   int y, int x, int c0, int n) {
  const int r = k / 2;
  Group acc = {};
  for (int i = 0; i < k; ++i) {
    const int yy = y - i + r;
    if (yy < 0 || yy >= geo.H) continue;
    for (int j = 0; j < k; ++j) {
      const int xx = x - j + r;
      if (xx < 0 || xx >= geo.W) continue;
      const Group dv = load_at<float>(d, b, yy, xx, c0, n);
      const Group wv = load_at<float>(w, i, j, 0, c0, n);
FF_UNROLL
      for (int e = 0; e < kGroup; ++e) acc.v[e] = fmaf(wv.v[e], dv.v[e], acc.v[e]);
    }
  }
  return acc;
}

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("focalfast CUDA kernel ") + what + ": " + cudaGetErrorString(err));
  }
}

// Stream::record: keep the launch of Op (its demangled type names the kernel in the cubin) instead of running it.
template <class Op>
void record_launch(int64_t blocks, int threads, int64_t smem_bytes) {
  int status = 0;
  char* op = abi::__cxa_demangle(typeid(Op).name(), nullptr, nullptr, &status);
  recorded_launches().push_back({Op::kName, status == 0 ? op : typeid(Op).name(), blocks, threads, smem_bytes});
  std::free(op);
}

// ---- Kernels on a 3D grid of threads ------------------------------------------------------------------
//
// A grid of `images` x `bands` rows of `items` threads (GridShape): blockIdx.z is the image, blockIdx.y the
// band, and the blocks along x cover the items, `threads` to a block. Every index is a 32-bit grid
// coordinate: no thread divides a 64-bit number to find its work. Element offsets stay 64-bit.
constexpr int kMaxGridYZ = 65535;  // gridDim.y and gridDim.z limits: larger grids take several launches

struct GridShape {
  int items = 0, bands = 1, images = 1;
  int threads = 0;  // per block, a multiple of 32: the fewest warps per block that cover the items evenly
};

struct GridThread {
  int item, band, image;
};

// items <= kMaxGridItems (the binding checks): the item indices of the last block fit an int.
inline GridShape grid_shape(int64_t items, int64_t bands, int64_t images) {
  GridShape g;
  g.items = int(items);
  g.bands = int(bands);
  g.images = int(images);
  const int64_t warps = ceil_div(items, 32), tiles = ceil_div(warps, kThreadsPerBlock / 32);
  g.threads = int(ceil_div(warps, tiles) * 32);
  return g;
}

template <class Op>
__global__ void __launch_bounds__(kThreadsPerBlock)
    grid_kernel(const typename Op::Params p, int items, int band0, int image0) {
  const int item = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (item < items) Op::run(p, GridThread{item, band0 + int(blockIdx.y), image0 + int(blockIdx.z)});
}

// Runs Op::run(p, thread) for every thread of the grid: on the GPU, or on the host image by image (tests;
// the first 1/host_sample of the threads: image 0 first).
template <class Op>
void launch_grid(const typename Op::Params& p, const GridShape& g, const Stream& stream) {
  if (g.items <= 0 || g.bands <= 0 || g.images <= 0) return;
  const int64_t tiles = ceil_div(g.items, g.threads), per_image = int64_t(g.items) * g.bands;
  if (stream.record) return record_launch<Op>(tiles * g.bands * g.images, g.threads, 0);
  if (stream.on_host) {
    const auto thread = [&](int64_t t) {
      return GridThread{int(t % g.items), int(t / g.items % g.bands), int(t / per_image)};
    };
    for (int64_t t = 0; t < ceil_div(per_image * g.images, stream.host_sample); ++t) Op::run(p, thread(t));
    return;
  }
  for (int image0 = 0; image0 < g.images; image0 += kMaxGridYZ) {
    for (int band0 = 0; band0 < g.bands; band0 += kMaxGridYZ) {
      const dim3 grid(unsigned(tiles), unsigned(min_int(kMaxGridYZ, g.bands - band0)),
                      unsigned(min_int(kMaxGridYZ, g.images - image0)));
      grid_kernel<Op><<<grid, g.threads, 0, stream.stream>>>(p, g.items, band0, image0);
    }
  }
  check_cuda(cudaGetLastError(), Op::kName);
}

// The thread of a grid of columns (items = W x channel groups, bands of `rows` image rows, images):
// channels [c0, c0 + n) of column x of image b, rows [y0, y1).
struct ColumnTask {
  int b, x, c0, n, y0, y1;
};

FF_HD ColumnTask column_task(const GridThread& t, const Geometry& geo, int rows) {
  ColumnTask task;
  const int groups = geo.groups();
  task.b = t.image;
  task.x = t.item / groups;
  task.c0 = (t.item - task.x * groups) * kGroup;
  task.n = min_int(kGroup, geo.C - task.c0);
  task.y0 = t.band * rows;
  task.y1 = task.y0 + min_int(rows, geo.H - task.y0);
  return task;
}

// The thread of a grid of one pixel per thread (items = W x channel groups, bands = H rows, images).
struct PixelTask {
  int b, y, x, c0, n, group;
  int64_t pixel;  // (b * H + y) * W + x
};

FF_HD PixelTask pixel_task(const GridThread& t, const Geometry& geo) {
  PixelTask task;
  const int groups = geo.groups();
  task.b = t.image;
  task.y = t.band;
  task.x = t.item / groups;
  task.group = t.item - task.x * groups;
  task.c0 = task.group * kGroup;
  task.n = min_int(kGroup, geo.C - task.c0);
  task.pixel = (int64_t(task.b) * geo.H + task.y) * geo.W + task.x;
  return task;
}

inline GridShape pixel_grid(const Geometry& geo) { return grid_shape(int64_t(geo.W) * geo.groups(), geo.H, geo.B); }

inline GridShape column_grid(const Geometry& geo, int rows) {
  return grid_shape(int64_t(geo.W) * geo.groups(), ceil_div(geo.H, rows), geo.B);
}

// A pointer that walks down the rows of an image: `step_bytes` a row, the view's sy_bytes (a kernel argument: one
// 64-bit add a step, IADD3 and IADD3.X of the argument; a step in elements, scaled in the kernel, took ptxas a
// shift-add and one or two moves out of the uniform registers it held the step in, 3-4 instructions).
template <typename T>
struct RowCursor {
  T* p;
  int64_t step_bytes;
  FF_HD void next() {
    using Byte = std::conditional_t<std::is_const<T>::value, const char, char>;
    p = reinterpret_cast<T*>(reinterpret_cast<Byte*>(p) + step_bytes);
  }
};

// The row step of a view of T (the host checks that sy_bytes is sy's).
template <typename T>
FF_HD int64_t row_step_bytes(int64_t sy, int64_t sy_bytes) {
#ifndef __CUDA_ARCH__
  if (sy_bytes != sy * int64_t(sizeof(T))) throw std::logic_error("focalfast: internal: a view's sy_bytes is not sy's");
#endif
  return sy_bytes;
}

template <typename T>
FF_HD RowCursor<T> row_cursor(const View& v, const ColumnTask& task) {
  return {static_cast<T*>(v.ptr) + v.at(task.b, task.y0, task.x) + task.c0, row_step_bytes<T>(v.sy, v.sy_bytes)};
}

template <typename T>
FF_HD RowCursor<const T> gate_cursor(const GateView& g, const ColumnTask& task, int level) {
  return {static_cast<const T*>(g.ptr) + task.b * g.sb + task.y0 * g.sy + task.x * g.sx + level * g.sl,
          row_step_bytes<T>(g.sy, g.sy_bytes)};
}

// scale * global_term[b, c] for the channels of a thread of output_fwd.
FF_HD Group scaled_global_term(const ModulatorArgs& m, const ColumnTask& task) {
  Group g = load_group(static_cast<const float*>(m.global_term.ptr) + m.global_term.at(task.b, 0, 0) + task.c0, task.n,
                       m.global_term.aligned);
FF_UNROLL
  for (int e = 0; e < kGroup; ++e) g.v[e] *= m.scale;
  return g;
}

// Calls f(T{}) with T the storage type of dtype.
template <class F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); return;
    case DType::kFloat16: f(__half{}); return;
    case DType::kBFloat16: f(__nv_bfloat16{}); return;
  }
  throw std::invalid_argument("focalfast: unknown dtype code");
}

// Calls f(std::bool_constant<value>{}): a run-time flag as a template parameter.
template <class F>
void dispatch_bool(bool value, F&& f) {
  if (value) return f(std::true_type{});
  f(std::false_type{});
}

// Calls f(Z{}) with Z the storage type of a level input: fp32 scratch, or ctx in T.
template <typename T, class F>
void dispatch_level_input(bool fp32, F&& f) {
  if (fp32) {
    f(float{});
  } else {
    f(T{});
  }
}

}  // namespace focalfast
