// Forward kernels: the fused row-streaming sweep over all focal levels (context_fwd), the level-at-a-time
// fallback for images too wide for its shared memory (conv_level_fwd), the epilogue of the h GEMM (bias,
// rank-1 global term, q *), and the split reduction that turns every per-strip fp32 partial into a sum in
// a fixed order (no atomics: deterministic).
#include "focal_modulation_sweep.cuh"

namespace focalfast {
namespace {

// Shared memory of context_fwd (fp32): the block's weights, a ring of k_l rows per level input z_l
// (padded by r_l), the gated sums of the rows between level 0 and the last level, and per-item pooling sums.
constexpr int kFwdStrip = 3;  // pixels per conv item of context_fwd (odd: no bank conflicts)

struct ContextFwdLayout {
  int64_t weights = 0, pool = 0, total = 0;
  Ring z[kMaxFocalLevel];
  Ring acc;

  FF_HD ContextFwdLayout(const SweepLevels& lv, int W, int chunk) {
    SmemAllocator a;
    const int width = strips_of(W, kFwdStrip) * kFwdStrip;
    weights = a.take(int64_t(lv.taps()) * chunk);
    for (int l = 0; l < lv.L; ++l) z[l] = a.ring(lv.k[l], width + 2 * lv.r(l), chunk);
    acc = a.ring(lv.offset(lv.L) - lv.offset(1) + 1, width, chunk);
    pool = a.take(int64_t(strips_of(W, kFwdStrip)) * chunk);
    total = a.used;
  }
};

// A block: image b, rows [y0, y1), channels [c_begin, c_begin + chunk). Step t of the sweep loads ctx row t,
// and level l turns z_l's rows into z_{l+1}'s row y = t - o_{l+1} (its k_l input rows are in the ring by then):
//   z_{l+1} = GELU(dwconv_l(z_l)),  acc += gates_l * z_{l+1};  at the last level
//   ctx_local = scale * acc (row t - R), pool += z_L   (rows of the band only).
// Rows outside the image enter the rings as zeros (each conv zero-pads its own input). The sweep starts at
// t = y0 - R (the halo; 0 for the first band) and ends when row y1 - 1 is out.
template <typename T>
struct ContextFwd {
  using Params = ContextFwdParams;
  static constexpr const char* kName = "context_fwd";

  static FF_HD void run(const Params& p, int block, float* smem) {
    const Geometry& geo = p.geo;
    const SweepLevels& lv = p.levels;
    const int chunk = p.chunk, groups = chunk / kGroup;
    const SweepBand band(block, geo, p.band_rows, chunk);
    const int b = band.b, c_begin = band.c_begin, cn = band.cn;
    const int H = geo.H, W = geo.W, L = lv.L, R = lv.offset(L), strips = strips_of(W, kFwdStrip);
    const ContextFwdLayout s(lv, W, chunk);
    const float* weights = static_cast<const float*>(p.weights.ptr);

    // The block's weights (zero past cn); everything else zero.
    FF_FOR_EACH(i, int(s.total)) {
      float v = 0.f;
      if (i < lv.taps() * chunk && i % chunk < cn) v = weights[p.weights.at(i / chunk, 0, 0) + c_begin + i % chunk];
      smem[i] = v;
    }
    FF_BARRIER();

    for (int t = max_int(0, band.y0 - R); t < band.y1 + R; ++t) {
      // ctx row t (zeros past the image) into ring 0, 8 channels an item.
      FF_FOR_EACH(item, W * groups) {
        const int x = item / groups, c = item % groups * kGroup, n = min_int(kGroup, cn - c);
        const Group v = t < H && n > 0 ? load_at<T>(p.ctx, b, t, x, c_begin + c, n) : Group{};
        store8(s.z[0].row(smem, t) + (lv.r(0) + x) * chunk + c, v);
      }
      FF_BARRIER();

      for (int l = 0; l < L; ++l) {
        const int y = t - lv.offset(l + 1);
        const bool last = l == L - 1;
        const float* w = smem + s.weights + int64_t(lv.taps_before(l)) * chunk;
        FF_FOR_EACH(item, strips * chunk) {
          const int x0 = item / chunk * kFwdStrip, c = item % chunk;
          float z[kFwdStrip] = {};
          if (y >= 0 && y < H) {
            conv_strip(smem, s.z[l], w + c, lv.k[l], chunk, y, x0, c, false, z);
            float* acc = s.acc.row(smem, y) + c;
FF_UNROLL
            for (int u = 0; u < kFwdStrip; ++u) {
              const int x = x0 + u;
              if (x >= W) {
                z[u] = 0.f;
                continue;
              }
              z[u] = gelu(z[u]);
              const float gate = load_gate<T>(p.gates, b, y, x, l);
              acc[x * chunk] = l == 0 ? gate * z[u] : fmaf(gate, z[u], acc[x * chunk]);
              if (last && band.owns(y)) smem[s.pool + item] += z[u];
            }
          }
          if (!last) {
            float* dst = s.z[l + 1].row(smem, y) + (lv.r(l + 1) + x0) * chunk + c;
FF_UNROLL
            for (int u = 0; u < kFwdStrip; ++u) dst[u * chunk] = z[u];
          }
        }
        FF_BARRIER();
      }

      const int y = t - R;  // its gated sum is complete
      if (band.owns(y)) {
        FF_FOR_EACH(item, W * groups) {
          const int x = item / groups, c = item % groups * kGroup, n = min_int(kGroup, cn - c);
          if (n <= 0) continue;
          Group v = load8(s.acc.row(smem, y) + x * chunk + c);
FF_UNROLL
          for (int e = 0; e < kGroup; ++e) v.v[e] *= p.scale;
          store_at<T>(p.ctx_local, b, y, x, c_begin + c, n, v);
        }
        FF_BARRIER();
      }
    }

    if (p.pooled_sum.ptr) {  // the items' sums in a fixed order
      FF_FOR_EACH(c, cn) {
        float sum = 0.f;
        for (int i = 0; i < strips; ++i) sum += smem[s.pool + i * chunk + c];
        static_cast<float*>(p.pooled_sum.ptr)[p.pooled_sum.at(band.partial_row(), 0, 0) + c_begin + c] = sum;
      }
    }
  }
};

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
    const ModulatorArgs& m = p.mod;
    const Group linear = load_at<T>(m.linear, b, y, x, c0, n);
    const Group bias = m.bias.ptr ? load_at<float>(m.bias, 0, 0, 0, c0, n) : Group{};
    const Group global_term = load_at<float>(m.global_term, b, 0, 0, c0, n);
    const float global_gate = m.scale * load_gate<T>(m.gates, b, y, x, m.gates.L);
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

int64_t context_fwd_smem_bytes(const SweepLevels& levels, int W, int chunk) {
  return ContextFwdLayout(levels, W, chunk).total * int64_t(sizeof(float));
}

void context_fwd(const ContextFwdParams& p, const Stream& stream) {
  const int blocks = p.geo.B * int(ceil_div(p.geo.H, p.band_rows) * ceil_div(p.geo.C, p.chunk));
  const int64_t smem = context_fwd_smem_bytes(p.levels, p.geo.W, p.chunk);
  dispatch_dtype(p.dtype, [&](auto t_tag) {
    using T = decltype(t_tag);
    launch_sweep<ContextFwd<T>>(p, blocks, sweep_threads(p.geo.W, kFwdStrip, p.chunk), smem, stream);
  });
}

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
