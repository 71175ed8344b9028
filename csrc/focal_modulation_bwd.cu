// Backward kernels. Nothing per level is saved by the forward. The fused path: output_bwd (below), then
// context_bwd, one row-streaming sweep that recomputes the levels and runs their adjoint chain.
// The fallback for images too wide for its shared memory recomputes z_1..z_{L-1} with conv_level_fwd,
// then runs, with grad_ctx_all = grad_modulator W from a GEMM:
//   output_bwd      grad_q, grad_modulator and the per-strip partials that give dbias and dG
//   conv_level_bwd  levels L-1 .. 0: grad_pre_l and the per-group gate-gradient partials
//   weight_grad     per-level depthwise weight gradient partials (split reduction)
//   conv_adjoint    grad_ctx from level 0's grad_pre
// Every partial is reduced by reduce_sum in a fixed order: the gradients are bitwise deterministic.
#include "focal_modulation_sweep.cuh"

namespace focalfast {
namespace {

// Shared memory of context_bwd (fp32). With lag_l = 2R - o_{l+1} (the adjoint of level l runs that many
// rows behind the ctx row being loaded) the rings are as deep as their readers need:
//   z_l          levels' inputs, 2R - 2 o_l + 1 rows (z_L: 1), padded by r_l: read by the recompute,
//                the weight gradient (rows y +- r_l at lag_l) and the gate gradient of level l - 1;
//                z_0 = ctx only k_0 rows, for the recompute (level 0's weight gradient reads ctx itself)
//   gelu_grad_l  GELU'(pre_l), 2R - 2 o_{l+1} + 1 rows: written at lag o_{l+1}, read at lag_l
//   grad_pre_l   k_l rows, padded by r_l: read by level l - 1's adjoint conv (grad_ctx for l = 0)
// plus the block's weights and its weight-gradient sums. ctx and grad_ctx_all rows that are read again
// later come from global memory (L1/L2 hits): two blocks per SM fit where deeper rings would not.
constexpr int kBwdStrip = 3;  // pixels per conv item of context_bwd (odd: no bank conflicts)

struct ContextBwdLayout {
  int64_t weights = 0, weight_grad = 0, total = 0;
  Ring z[kMaxFocalLevel + 1], gelu_grad[kMaxFocalLevel], grad_pre[kMaxFocalLevel];

  FF_HD ContextBwdLayout(const SweepLevels& lv, int W, int chunk) {
    SmemAllocator a;
    const int width = strips_of(W, kBwdStrip) * kBwdStrip, R = lv.offset(lv.L);
    weights = a.take(int64_t(lv.taps()) * chunk);
    weight_grad = a.take(int64_t(lv.taps()) * chunk);
    for (int l = 0; l <= lv.L; ++l) {
      const int depth = l == 0 ? lv.k[0] : 2 * (R - lv.offset(l)) + 1;
      z[l] = a.ring(depth, width + (l < lv.L ? 2 * lv.r(l) : 0), chunk);
    }
    for (int l = 0; l < lv.L; ++l) gelu_grad[l] = a.ring(2 * (R - lv.offset(l + 1)) + 1, width, chunk);
    for (int l = 0; l < lv.L; ++l) grad_pre[l] = a.ring(lv.k[l], width + 2 * lv.r(l), chunk);
    total = a.used;
  }
};

// A block: image b, rows [y0, y1), channels [c_begin, c_begin + chunk), bottom to top from row
// y_start = y1 - 1 + 2R (the halo; H - 1 at most); step t handles, for a quantity produced `lag` rows
// behind, row y = y_start - t + lag (outputs: rows of the band only):
//   load          ctx row (lag 0) into z_0
//   recompute     level l at lag o_{l+1}: pre_l = dwconv_l(z_l), z_{l+1} = GELU(pre_l), GELU'(pre_l)
//   adjoint       level l = L-1 .. 0 at lag_l = 2R - o_{l+1}:
//                   dz = scale * gates_l * grad_ctx_all + (grad_mean at the last level, else
//                        the adjoint conv of grad_pre_{l+1}, whose rows y +- r_{l+1} are in by now)
//                   grad_pre_l = dz * GELU'(pre_l)
//   reduce        grad_ctx = adjoint conv of grad_pre_0 (lag 2R); weight-gradient sums
//                 dw_l[i, j] += sum_x grad_pre_l[y, x] z_l[y + i - r, x + j - r] (lag_l), in x order,
//                 one item per kernel row i and channel;
//                 gate partials over the chunk's channels (lag_l)
template <typename T>
struct ContextBwd {
  using Params = ContextBwdParams;
  struct Args {
    Params p;
  };
  static constexpr const char* kName = "context_bwd";

  // dw_l[i, j, c] += sum_x grad_pre_l[y, x] z_l[y + i - r, x + j - r] for every j < k, summed in x order: a
  // window of k values of z_l's row slides along x in registers (two loads per k FMAs). z_0 = ctx comes
  // from global memory (zero outside the image), the other levels from their rings.
  static FF_HD void weight_grad_row(const Params& p, const ContextBwdLayout& s, float* smem, int l, int i, int b,
                                    int y, int c_begin, int c) {
    const SweepLevels& lv = p.levels;
    const int k = lv.k[l], r = lv.r(l), W = p.geo.W, chunk = p.chunk, yy = y + i - r;
    if (l == 0 && (yy < 0 || yy >= p.geo.H)) return;
    const float* z_row = l > 0 ? s.z[l].row(smem, yy) + c : nullptr;
    const T* ctx_row = l == 0 ? static_cast<const T*>(p.ctx.ptr) + p.ctx.at(b, yy, 0) + c_begin + c : nullptr;
    auto z_at = [&](int q) -> float {  // z_l at padded column q, image column q - r
      if (z_row) return z_row[q * chunk];
      return q >= r && q - r < W ? to_float(ctx_row[(q - r) * p.ctx.sx]) : 0.f;
    };
    const float* grad_pre = s.grad_pre[l].row(smem, y) + r * chunk + c;
    float acc[kMaxKernelSize] = {}, window[kMaxKernelSize];
FF_UNROLL
    for (int j = 0; j < kMaxKernelSize; ++j) window[j] = j < k ? z_at(j) : 0.f;
    for (int x = 0; x < W; ++x) {
      const float g = grad_pre[x * chunk];
      const float next = x + 1 < W ? z_at(x + k) : 0.f;
FF_UNROLL
      for (int j = 0; j < kMaxKernelSize; ++j) {
        if (j < k) acc[j] = fmaf(g, window[j], acc[j]);
      }
FF_UNROLL
      for (int j = 0; j < kMaxKernelSize; ++j) window[j] = j + 1 < k ? window[j < kMaxKernelSize - 1 ? j + 1 : j] : next;
    }
    float* dw = smem + s.weight_grad + int64_t(lv.taps_before(l) + i * k) * chunk + c;
FF_UNROLL
    for (int j = 0; j < kMaxKernelSize; ++j) {
      if (j < k) dw[j * chunk] += acc[j];
    }
  }

  static FF_HD void run(const Args& args, int block, float* smem) {
    const Params& p = args.p;
    const Geometry& geo = p.geo;
    const SweepLevels& lv = p.levels;
    const int chunk = p.chunk, chunks = int(ceil_div(geo.C, chunk)), groups = chunk / kGroup;
    const SweepBand band(block, geo, p.band_rows, chunk);
    const int b = band.b, c_begin = band.c_begin, cn = band.cn, chunk_index = band.chunk_index;
    const int H = geo.H, W = geo.W, L = lv.L, R = lv.offset(L), strips = strips_of(W, kBwdStrip), taps = lv.taps();
    const int y_start = min_int(H - 1, band.y1 - 1 + 2 * R);
    const ContextBwdLayout s(lv, W, chunk);
    const float* weights = static_cast<const float*>(p.weights.ptr);

    FF_FOR_EACH(i, int(s.total)) {
      float v = 0.f;
      if (i < taps * chunk && i % chunk < cn) v = weights[p.weights.at(i / chunk, 0, 0) + c_begin + i % chunk];
      smem[i] = v;
    }
    FF_BARRIER();

    for (int t = 0; t <= y_start - band.y0 + 2 * R; ++t) {
      const int y_top = y_start - t;  // the row at lag 0
      FF_FOR_EACH(item, W * groups) {
        const int x = item / groups, c = item % groups * kGroup, n = min_int(kGroup, cn - c);
        const Group v = y_top >= 0 && n > 0 ? load_at<T>(p.ctx, b, y_top, x, c_begin + c, n) : Group{};
        store8(s.z[0].row(smem, y_top) + (lv.r(0) + x) * chunk + c, v);
      }
      FF_BARRIER();

      for (int l = 0; l < L; ++l) {  // recompute
        const int y = y_top + lv.offset(l + 1);
        const float* w = smem + s.weights + int64_t(lv.taps_before(l)) * chunk;
        FF_FOR_EACH(item, strips * chunk) {
          const int x0 = item / chunk * kBwdStrip, c = item % chunk;
          float pre[kBwdStrip] = {}, z[kBwdStrip] = {}, dg[kBwdStrip] = {};
          if (y >= 0 && y < H) {
            conv_strip(smem, s.z[l], w + c, lv.k[l], chunk, y, x0, c, false, pre);
FF_UNROLL
            for (int u = 0; u < kBwdStrip; ++u) {
              if (x0 + u < W) {
                z[u] = gelu(pre[u]);
                dg[u] = gelu_grad(pre[u]);
              }
            }
          }
          const int pad = l + 1 < L ? lv.r(l + 1) : 0;
          float* z_dst = s.z[l + 1].row(smem, y) + (pad + x0) * chunk + c;
          float* dg_dst = s.gelu_grad[l].row(smem, y) + x0 * chunk + c;
FF_UNROLL
          for (int u = 0; u < kBwdStrip; ++u) {
            z_dst[u * chunk] = z[u];
            dg_dst[u * chunk] = dg[u];
          }
        }
        FF_BARRIER();
      }

      for (int l = L - 1; l >= 0; --l) {  // adjoint
        const int y = y_top + 2 * R - lv.offset(l + 1);
        FF_FOR_EACH(item, strips * chunk) {
          const int x0 = item / chunk * kBwdStrip, c = item % chunk;
          float grad_pre[kBwdStrip] = {};
          if (y >= 0 && y < H && c < cn) {
            if (l == L - 1) {
              const float grad_mean = static_cast<const float*>(p.grad_mean.ptr)[p.grad_mean.at(b, 0, 0) + c_begin + c];
FF_UNROLL
              for (int u = 0; u < kBwdStrip; ++u) grad_pre[u] = grad_mean;
            } else {
              const float* w_next = smem + s.weights + int64_t(lv.taps_before(l + 1)) * chunk;
              conv_strip(smem, s.grad_pre[l + 1], w_next + c, lv.k[l + 1], chunk, y, x0, c, true, grad_pre);
            }
            const T* grad_ctx_all =
                static_cast<const T*>(p.grad_ctx_all.ptr) + p.grad_ctx_all.at(b, y, 0) + c_begin + c;
            const float* dg = s.gelu_grad[l].row(smem, y) + c;
FF_UNROLL
            for (int u = 0; u < kBwdStrip; ++u) {
              const int x = x0 + u;
              if (x >= W) {
                grad_pre[u] = 0.f;
                continue;
              }
              const float gate = p.scale * load_gate<T>(p.gates, b, y, x, l);
              grad_pre[u] = fmaf(gate, to_float(grad_ctx_all[x * p.grad_ctx_all.sx]), grad_pre[u]) * dg[x * chunk];
            }
          }
          float* dst = s.grad_pre[l].row(smem, y) + (lv.r(l) + x0) * chunk + c;
FF_UNROLL
          for (int u = 0; u < kBwdStrip; ++u) dst[u * chunk] = grad_pre[u];
        }
        FF_BARRIER();
      }

      // Reduce: grad_ctx items, then weight-gradient items, then gate items.
      const int ctx_items = strips * groups, weight_items = (2 * R + L) * chunk;  // sum_l k_l kernel rows
      FF_FOR_EACH(item, ctx_items + weight_items + (L + 1) * W) {
        if (item < ctx_items) {
          const int y = y_top + 2 * R, x0 = item / groups * kBwdStrip, c = item % groups * kGroup;
          const int n = min_int(kGroup, cn - c);
          if (!band.owns(y) || n <= 0) continue;
          float grad[kGroup][kBwdStrip] = {};
FF_UNROLL
          for (int e = 0; e < kGroup; ++e) {
            conv_strip(smem, s.grad_pre[0], smem + s.weights + c + e, lv.k[0], chunk, y, x0, c + e, true, grad[e]);
          }
          for (int u = 0; u < kBwdStrip && x0 + u < W; ++u) {
            Group v;
FF_UNROLL
            for (int e = 0; e < kGroup; ++e) v.v[e] = grad[e][u];
            store_at<T>(p.grad_ctx, b, y, x0 + u, c_begin + c, n, v);
          }
        } else if (item < ctx_items + weight_items) {
          int l = 0, i = (item - ctx_items) / chunk;  // kernel row i of level l
          while (i >= lv.k[l]) i -= lv.k[l++];
          const int c = (item - ctx_items) % chunk, y = y_top + 2 * R - lv.offset(l + 1);
          if (band.owns(y) && c < cn) weight_grad_row(p, s, smem, l, i, b, y, c_begin, c);
        } else {
          const int level = (item - ctx_items - weight_items) / W, x = (item - ctx_items - weight_items) % W;
          const int l = min_int(level, L - 1), y = y_top + 2 * R - lv.offset(l + 1);
          if (!band.owns(y)) continue;
          const int pad = level + 1 < L ? lv.r(level + 1) : 0;
          const float* z = level < L ? s.z[level + 1].row(smem, y) + (pad + x) * chunk : nullptr;
          float sum = 0.f;
          for (int c = 0; c < cn; c += kGroup) {  // sum_c grad_ctx_all * (z_{level+1} or G)
            const int n = min_int(kGroup, cn - c);
            const Group g = load_at<T>(p.grad_ctx_all, b, y, x, c_begin + c, n);
            const Group v = z ? load8(z + c) : load_at<float>(p.pooled, b, 0, 0, c_begin + c, n);
FF_UNROLL
            for (int e = 0; e < kGroup; ++e) sum = fmaf(g.v[e], v.v[e], sum);
          }
          const int64_t pixel = (int64_t(b) * H + y) * W + x;
          p.gate_partial[(pixel * (L + 1) + level) * chunks + chunk_index] = p.scale * sum;
        }
      }
      FF_BARRIER();
    }

    FF_FOR_EACH(item, taps * chunk) {
      const int tap = item / chunk, c = item % chunk;
      if (c < cn) {
        static_cast<float*>(p.weight_partial.ptr)[p.weight_partial.at(band.partial_row(), tap, 0) + c_begin + c] =
            smem[s.weight_grad + item];
      }
    }
  }
};

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
    const ModulatorArgs& m = p.mod;
    const Group bias = m.bias.ptr ? load_at<float>(m.bias, 0, 0, 0, c0, n) : Group{};
    const Group global_term = load_at<float>(m.global_term, b, 0, 0, c0, n);
    Group sum = {}, gated_sum = {};
    for (int64_t pixel = task.begin; pixel < task.end; ++pixel) {
      const int y = int(pixel / geo.W), x = int(pixel % geo.W);
      const Group grad_out = load_at<T>(p.grad_out, b, y, x, c0, n);
      const Group q = load_at<T>(p.q, b, y, x, c0, n);
      const Group linear = load_at<T>(m.linear, b, y, x, c0, n);
      const float global_gate = load_gate<T>(m.gates, b, y, x, m.gates.L);
      Group grad_q, grad_modulator;
FF_UNROLL
      for (int e = 0; e < kGroup; ++e) {
        const float modulator = linear.v[e] + bias.v[e] + m.scale * global_gate * global_term.v[e];
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

int64_t context_bwd_smem_bytes(const SweepLevels& levels, int W, int chunk) {
  return ContextBwdLayout(levels, W, chunk).total * int64_t(sizeof(float));
}

void context_bwd(const ContextBwdParams& p, const Stream& stream) {
  const int blocks = p.geo.B * int(ceil_div(p.geo.H, p.band_rows) * ceil_div(p.geo.C, p.chunk));
  const int64_t smem = context_bwd_smem_bytes(p.levels, p.geo.W, p.chunk);
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    launch_sweep<ContextBwd<T>>({p}, blocks, sweep_threads(p.geo.W, kBwdStrip, p.chunk), smem, stream);
  });
}

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
