// Forward kernels: one focal level (depthwise conv + GELU + gated sum, pooling partials at the last
// level), the epilogue of the h GEMM (bias, rank-1 global term, q *), and the split reduction that
// turns every per-strip fp32 partial into a sum in a fixed order (no atomics: deterministic).
#include "focal_modulation_common.cuh"

namespace focalfast {
namespace {

// A thread: one channel group of a strip of pixels of image b.
//   z = GELU(sum_taps w * z_in);  acc = acc_in + gates_l * z;  ctx_out = scale * acc (last level);
//   pool_partial[b, strip] = sum over the strip of z (last level: the global context's partial mean).
template <typename T, typename Z>
struct ConvLevelFwd {
  using Params = ConvLevelFwdParams;
  static constexpr const char* kName = "conv_level_fwd";

  static FF_HD void run(const Params& p, int64_t t) {
    const Geometry& geo = p.geo;
    const StripTask task = strip_task(t, geo, p.strip);
    const int b = task.b, c0 = task.c0, n = task.n;
    Group pooled = {};
    for (int64_t pixel = task.begin; pixel < task.end; ++pixel) {
      const int y = int(pixel / geo.W), x = int(pixel % geo.W);
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
    if (p.pool_partial.ptr) store_at<float>(p.pool_partial, b, task.strip, 0, c0, n, pooled);
  }
};

// A thread: one channel group of one pixel. out = q * (linear + bias + scale * gates_L * global_term).
template <typename T>
struct OutputFwd {
  using Params = OutputFwdParams;
  static constexpr const char* kName = "output_fwd";

  static FF_HD void run(const Params& p, int64_t t) {
    const PixelTask task = pixel_task(t, p.geo);
    const int b = task.b, y = task.y, x = task.x, c0 = task.c0, n = task.n;
    const Group q = load_at<T>(p.q, b, y, x, c0, n);
    const Group linear = load_at<T>(p.linear, b, y, x, c0, n);
    const Group bias = p.bias.ptr ? load_at<float>(p.bias, 0, 0, 0, c0, n) : Group{};
    const Group global_term = load_at<float>(p.global_term, b, 0, 0, c0, n);
    const float global_gate = p.scale * load_gate<T>(p.gates, b, y, x, p.gates.L);
    Group out;
FF_UNROLL
    for (int e = 0; e < kGroup; ++e) {
      out.v[e] = q.v[e] * (linear.v[e] + bias.v[e] + global_gate * global_term.v[e]);
    }
    store_at<T>(p.out, b, y, x, c0, n, out);
  }
};

// A thread: one output element; sums its column in order.
struct ReduceSum {
  using Params = ReduceParams;
  static constexpr const char* kName = "reduce_sum";

  static FF_HD void run(const Params& p, int64_t t) {
    const int64_t o = t / p.cols, m = t % p.cols;
    const float* in = p.in + o * p.so + m * p.sm;
    float sum = 0.f;
    for (int64_t r = 0; r < p.rows; ++r) sum += in[r * p.sr];
    p.out[t] = sum * p.scale;
  }
};

}  // namespace

void conv_level_fwd(const ConvLevelFwdParams& p, const Stream& stream) {
  const int64_t threads = int64_t(p.geo.B) * ceil_div(p.geo.pixels(), p.strip) * p.geo.groups();
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    dispatch_level_input<T>(p.z_in_fp32, [&](auto z_tag) {
      using Z = decltype(z_tag);
      launch<ConvLevelFwd<T, Z>>(p, threads, stream);
    });
  });
}

void output_fwd(const OutputFwdParams& p, const Stream& stream) {
  const int64_t threads = int64_t(p.geo.B) * p.geo.pixels() * p.geo.groups();
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    launch<OutputFwd<T>>(p, threads, stream);
  });
}

void reduce_sum(const ReduceParams& p, const Stream& stream) { launch<ReduceSum>(p, p.outer * p.cols, stream); }

}  // namespace focalfast
