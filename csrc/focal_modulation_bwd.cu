// Backward kernels. Nothing per level is saved by the forward: the Python side recomputes z_1..z_{L-1}
// with conv_level_fwd, then runs, with grad_ctx_all = grad_modulator W from a GEMM:
//   output_bwd      grad_q, grad_modulator and the per-strip partials that give dbias and dG
//   conv_level_bwd  levels L-1 .. 0: grad_pre_l and the per-group gate-gradient partials
//   weight_grad     per-level depthwise weight gradient partials (split reduction)
//   conv_adjoint    grad_ctx from level 0's grad_pre
// Every partial is reduced by reduce_sum in a fixed order: the gradients are bitwise deterministic.
#include "focal_modulation_common.cuh"

namespace focalfast {
namespace {

// A thread: one channel group of a strip of pixels of image b.
//   modulator = linear + bias + scale * gates_L * global_term
//   grad_q = grad_out * modulator;  grad_modulator = grad_out * q
//   partial[b, strip] = (sum grad_modulator, sum gates_L * grad_modulator) over the strip
template <typename T>
struct OutputBwd {
  using Params = OutputBwdParams;
  static constexpr const char* kName = "output_bwd";

  static FF_HD void run(const Params& p, int64_t t) {
    const Geometry& geo = p.geo;
    const StripTask task = strip_task(t, geo, p.strip);
    const int b = task.b, c0 = task.c0, n = task.n;
    const Group bias = p.bias.ptr ? load_at<float>(p.bias, 0, 0, 0, c0, n) : Group{};
    const Group global_term = load_at<float>(p.global_term, b, 0, 0, c0, n);
    Group sum = {}, gated_sum = {};
    for (int64_t pixel = task.begin; pixel < task.end; ++pixel) {
      const int y = int(pixel / geo.W), x = int(pixel % geo.W);
      const Group grad_out = load_at<T>(p.grad_out, b, y, x, c0, n);
      const Group q = load_at<T>(p.q, b, y, x, c0, n);
      const Group linear = load_at<T>(p.linear, b, y, x, c0, n);
      const float global_gate = load_gate<T>(p.gates, b, y, x, p.gates.L);
      Group grad_q, grad_modulator;
FF_UNROLL
      for (int e = 0; e < kGroup; ++e) {
        const float modulator = linear.v[e] + bias.v[e] + p.scale * global_gate * global_term.v[e];
        grad_q.v[e] = grad_out.v[e] * modulator;
        grad_modulator.v[e] = grad_out.v[e] * q.v[e];
        sum.v[e] += grad_modulator.v[e];
        gated_sum.v[e] = fmaf(global_gate, grad_modulator.v[e], gated_sum.v[e]);
      }
      store_at<T>(p.grad_q, b, y, x, c0, n, grad_q);
      store_at<T>(p.grad_modulator, b, y, x, c0, n, grad_modulator);
    }
    store_at<float>(p.partial, b, task.strip, 0, c0, n, sum);
    store_at<float>(p.partial, b, task.strip, 1, c0, n, gated_sum);
  }
};

// A thread: one channel group of one pixel of level l (see ConvLevelBwdParams).
template <typename T, typename Z>
struct ConvLevelBwd {
  using Params = ConvLevelBwdParams;
  static constexpr const char* kName = "conv_level_bwd";

  static FF_HD void run(const Params& p, int64_t t) {
    const Geometry& geo = p.geo;
    const PixelTask task = pixel_task(t, geo);
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
      grad_pre.v[e] = dz.v[e] * gelu_grad(pre.v[e]);
      grad_gate = fmaf(grad_ctx_all.v[e], gelu(pre.v[e]), grad_gate);
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

// A thread: one kernel row i and one channel group of a strip of `rows` image rows; K accumulators
// of 8 channels, one per kernel column j, held in registers (K is a template parameter).
template <typename Z, int K>
struct WeightGrad {
  using Params = WeightGradParams;
  static constexpr const char* kName = "weight_grad";

  static FF_HD void run(const Params& p, int64_t t) {
    const Geometry& geo = p.geo;
    constexpr int r = K / 2;
    const int64_t row_strips = ceil_div(geo.H, p.rows);
    const int group = int(t % geo.groups());
    t /= geo.groups();
    const int i = int(t % K);
    t /= K;
    const int64_t strip = t % row_strips;
    const int b = int(t / row_strips);
    const int c0 = group * kGroup, n = min_int(kGroup, geo.C - c0);

    Group acc[K] = {};
    const int y_end = int(min_i64(geo.H, (strip + 1) * p.rows));
    for (int y = int(strip * p.rows); y < y_end; ++y) {
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

  static FF_HD void run(const Params& p, int64_t t) {
    const PixelTask task = pixel_task(t, p.geo);
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

void output_bwd(const OutputBwdParams& p, const Stream& stream) {
  const int64_t threads = int64_t(p.geo.B) * ceil_div(p.geo.pixels(), p.strip) * p.geo.groups();
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    launch<OutputBwd<T>>(p, threads, stream);
  });
}

void conv_level_bwd(const ConvLevelBwdParams& p, const Stream& stream) {
  const int64_t threads = int64_t(p.geo.B) * p.geo.pixels() * p.geo.groups();
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    dispatch_level_input<T>(p.z_in_fp32, [&](auto z_tag) {
      using Z = decltype(z_tag);
      launch<ConvLevelBwd<T, Z>>(p, threads, stream);
    });
  });
}

void weight_grad(const WeightGradParams& p, const Stream& stream) {
  const int64_t threads = int64_t(p.geo.B) * ceil_div(p.geo.H, p.rows) * p.k * p.geo.groups();
  dispatch_dtype(p.z_dtype, [&](auto z_tag) {
    using Z = decltype(z_tag);
    dispatch_kernel_size(p.k, [&](auto k_tag) {
      constexpr int K = decltype(k_tag)::value;
      launch<WeightGrad<Z, K>>(p, threads, stream);
    });
  });
}

void conv_adjoint(const ConvAdjointParams& p, const Stream& stream) {
  const int64_t threads = int64_t(p.geo.B) * p.geo.pixels() * p.geo.groups();
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    launch<ConvAdjoint<T>>(p, threads, stream);
  });
}

}  // namespace focalfast
