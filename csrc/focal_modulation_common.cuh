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
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>

#include "focal_modulation.h"

// "#pragma unroll" for the device passes; the host compiler (tests) chooses for itself. FF_NO_UNROLL keeps a
// loop with a run-time trip count whole (no peeled or remainder copies: one SASS loop per source loop).
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
FF_HD int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
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

// Channels [c0, c0 + n) of p (already offset to c0) as fp32; zeros past n.
template <typename T>
FF_HD Group load_group(const T* p, int n, bool aligned) {
  Group g;
  if (aligned) {  // then n == kGroup
    constexpr int kVec = Vec16<T>::kSize;
FF_UNROLL
    for (int k = 0; k < kGroup; k += kVec) {
      const Vec16<T> r = load_vec16(p + k);
FF_UNROLL
      for (int e = 0; e < kVec; ++e) g.v[k + e] = to_float(r.v[e]);
    }
  } else {
FF_UNROLL
    for (int e = 0; e < kGroup; ++e) g.v[e] = e < n ? to_float(p[e]) : 0.f;
  }
  return g;
}

template <typename T>
FF_HD void store_group(T* p, int n, bool aligned, const Group& g) {
  if (aligned) {
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
      if (e < n) p[e] = from_float<T>(g.v[e]);
    }
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

// The standard normal CDF Phi(x) and density phi(x) from one shared evaluation of the upper tail
//   Q(u) = P(X > u) = t 2^(A(t) - u^2 log2(e) / 2),  u = |x|,  t = 1 / (1 + 0.4 u),
// A a degree-8 polynomial fitted (weighted least squares in float64, then checked in fp32) to
// log2(Q(u) / t) + u^2 log2(e) / 2 on 0 <= u <= 6. Phi(x) = x < 0 ? Q : 1 - Q, so the left tail keeps its
// relative accuracy (1 + erf(x / sqrt 2) loses it to cancellation). Measured in fp32 against float64:
// |Phi - exact| <= 1.7e-7 everywhere, relative error of Q <= 1.1e-6 for |x| <= 4 (the exponent's rounding).
// About 18 instructions on the GPU: an FFMA and MUFU.RCP for t, 8 FFMA, MUFU.EX2, a multiply and a select.
// One special-function-unit instruction on the GPU (about 2 ulp, denormals flushed): 1 / x or 2^x; exact on the host.
enum class Mufu { kRcp, kExp2 };

template <Mufu kOp>
FF_HD float mufu(float x) {
#ifdef __CUDA_ARCH__
  float r;
  if (kOp == Mufu::kRcp) {
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  } else {
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  }
  return r;
#else
  return kOp == Mufu::kRcp ? 1.f / x : std::exp2(x);
#endif
}

constexpr float kHalfLog2E = 0.72134752044448170f;  // log2(e) / 2

// The exponent e of Q(u) = t 2^e (u >= 0); sets t.
FF_HD float tail_exponent(float u, float& t) {
  t = mufu<Mufu::kRcp>(fmaf(0.4f, u, 1.f));
  float a = 2.278738022e-01f;
  a = fmaf(a, t, -1.161405683e+00f);
  a = fmaf(a, t, 2.259239912e+00f);
  a = fmaf(a, t, -1.835727453e+00f);
  a = fmaf(a, t, 2.547243237e-01f);
  a = fmaf(a, t, -1.083279122e-02f);
  a = fmaf(a, t, 4.642899632e-01f);
  a = fmaf(a, t, 1.450148463e+00f);
  a = fmaf(a, t, -2.648310423e+00f);
  return fmaf(-kHalfLog2E * u, u, a);
}

FF_HD float normal_cdf(float x) {
  float t;
  const float e = tail_exponent(fabsf(x), t);
  const float q = t * mufu<Mufu::kExp2>(e);
  return x < 0.f ? q : 1.f - q;
}

// GELU(x) = x * Phi(x) (the exact, erf-based GELU).
FF_HD float gelu(float x) { return x * normal_cdf(x); }

// GELU(x) and GELU'(x) = Phi(x) + x * phi(x), phi(x) = 2^(-x^2 log2(e) / 2) / sqrt(2 pi), sharing t and x^2.
FF_HD void gelu_and_grad(float x, float& value, float& grad) {
  const float cdf = normal_cdf(x);
  const float pdf = 0.39894228040143268f * mufu<Mufu::kExp2>(-kHalfLog2E * x * x);
  value = x * cdf;
  grad = fmaf(x, pdf, cdf);
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

// Thread t of a kernel over (image b, pixel p, channel group): groups vary fastest.
struct PixelTask {
  int b, y, x, c0, n, group;
  int64_t pixel;  // b * H * W + y * W + x
};

FF_HD PixelTask pixel_task(int64_t t, const Geometry& geo) {
  PixelTask task;
  task.group = int(t % geo.groups());
  task.pixel = t / geo.groups();
  task.b = int(task.pixel / geo.pixels());
  const int64_t p = task.pixel % geo.pixels();
  task.y = int(p / geo.W);
  task.x = int(p % geo.W);
  task.c0 = task.group * kGroup;
  task.n = min_int(kGroup, geo.C - task.c0);
  return task;
}

// Thread t of a kernel over (image b, strip of `strip` consecutive pixels, channel group).
struct StripTask {
  int b, c0, n;
  int64_t strip, begin, end;  // pixels [begin, end) of image b
};

FF_HD StripTask strip_task(int64_t t, const Geometry& geo, int strip) {
  const int64_t strips = ceil_div(geo.pixels(), strip);
  StripTask task;
  const int group = int(t % geo.groups());
  t /= geo.groups();
  task.strip = t % strips;
  task.b = int(t / strips);
  task.c0 = group * kGroup;
  task.n = min_int(kGroup, geo.C - task.c0);
  task.begin = task.strip * strip;
  task.end = min_i64(geo.pixels(), task.begin + strip);
  return task;
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

template <class Op>
__global__ void __launch_bounds__(kThreadsPerBlock) grid_kernel(const typename Op::Params p, int64_t total) {
  const int64_t t = int64_t(blockIdx.x) * kThreadsPerBlock + threadIdx.x;
  if (t < total) Op::run(p, t);
}

// Runs Op::run(p, t) for t in [0, total): one GPU thread each, or a host loop (tests).
template <class Op>
void launch(const typename Op::Params& p, int64_t total, const Stream& stream) {
  if (total <= 0) return;
  if (stream.record) return record_launch<Op>(ceil_div(total, kThreadsPerBlock), kThreadsPerBlock, 0);
  if (stream.on_host) {
    for (int64_t t = 0; t < ceil_div(total, stream.host_sample); ++t) Op::run(p, t);
    return;
  }
  const int64_t blocks = ceil_div(total, kThreadsPerBlock);
  grid_kernel<Op><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream.stream>>>(p, total);
  check_cuda(cudaGetLastError(), Op::kName);
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
