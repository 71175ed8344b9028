// pybind11 binding of the focal-modulation kernels: plain CUDA, no torch headers.
//
// Python (focalfast/ops/cuda/focal_modulation.py) allocates every tensor and describes each one as a
// TensorArg (data pointer, dtype code, shape, strides, device index; -1 for the CPU). Each function
// checks device, dtype, layout and shapes, raising TypeError / ValueError that name the argument, then
// launches on the given CUDA stream, or runs the same kernel bodies serially on the host when every
// tensor is on the CPU (for tests on machines without a GPU).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "focal_modulation.h"

#ifndef FOCALFAST_SOURCE_HASH
#define FOCALFAST_SOURCE_HASH "unknown"
#endif

// The source hash as a plain C symbol: the loader reads it with ctypes before importing the module, so that a stale
// build is never imported (a second extension module of the same name would not replace it in the process).
extern "C" __attribute__((visibility("default"))) const char* focalfast_source_hash() { return FOCALFAST_SOURCE_HASH; }

namespace py = pybind11;

namespace focalfast {
namespace {

constexpr const char* kVersion = "0.1.0";

bool record_launches = false;  // set_record_launches: launchers record instead of running (static cost report)
int64_t host_sample = 1;       // set_host_sample: the host path runs the first 1/host_sample of each launch

const std::vector<std::string>& kernel_names() {
  static const std::vector<std::string> names = {"context_fwd",    "context_bwd", "conv_level_fwd",
                                                 "output_fwd",     "reduce_sum",  "output_bwd",
                                                 "conv_level_bwd", "weight_grad", "conv_adjoint"};
  return names;
}

struct TensorArg {
  uintptr_t ptr;
  DType dtype;
  std::vector<int64_t> shape, strides;
  int device;  // CUDA device index, -1 for the CPU
};

using OptionalTensor = std::optional<TensorArg>;

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

int64_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Checks of one launch: every message starts with the function and the argument's name.
class Checks {
 public:
  explicit Checks(const char* function) : function_(function) {}

  [[noreturn]] void fail_value(const std::string& name, const std::string& what) const {
    throw py::value_error(std::string(function_) + ": " + name + ": " + what);
  }

  void dtype(const TensorArg& t, const std::string& name, DType expected) const {
    if (t.dtype != expected) {
      throw py::type_error(std::string(function_) + ": " + name + ": expected dtype " + dtype_name(expected) +
                           ", got " + dtype_name(t.dtype));
    }
  }

  void shape(const TensorArg& t, const std::string& name, const std::vector<int64_t>& expected) const {
    if (t.shape != expected) fail_value(name, "expected shape " + shape_str(expected) + ", got " + shape_str(t.shape));
  }

  void contiguous(const TensorArg& t, const std::string& name) const {
    int64_t expected = 1;
    for (size_t d = t.shape.size(); d-- > 0;) {
      if (t.shape[d] != 1 && t.strides[d] != expected) fail_value(name, "expected a contiguous tensor");
      expected *= t.shape[d];
    }
  }

  // The first tensor sets the device; every other must be on the same one.
  void device(const TensorArg& t, const std::string& name) {
    if (t.ptr == 0) fail_value(name, "null data pointer");
    if (device_ == kUnset) {
      device_ = t.device;
    } else if (t.device != device_) {
      fail_value(name, "is on " + device_str(t.device) + " but the first tensor is on " + device_str(device_));
    }
  }

  // A tensor read or written through View: device, dtype, shape (and contiguity if asked).
  View view(const TensorArg& t, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
            bool contiguous_required, int C) {
    device(t, name);
    this->dtype(t, name, dtype);
    this->shape(t, name, shape);
    if (contiguous_required) contiguous(t, name);
    const size_t d = t.shape.size();
    if (t.shape[d - 1] != 1 && t.strides[d - 1] != 1) fail_value(name, "expected channels (the last dim) contiguous");
    if (d > 4) fail_value(name, "internal: a view has at most 4 dims");
    View v;
    v.ptr = reinterpret_cast<void*>(t.ptr);
    // The dims before the channels are (b, y, x) in order; missing ones have stride 0.
    int64_t* strides[3] = {&v.sb, &v.sy, &v.sx};
    for (size_t i = 0; i + 1 < d; ++i) *strides[i] = t.strides[i];
    const int64_t bytes = element_size(dtype);
    v.sy_bytes = v.sy * bytes;
    v.aligned = C % kGroup == 0 && t.ptr % 16 == 0 && (v.sb * bytes) % 16 == 0 && (v.sy * bytes) % 16 == 0 &&
                (v.sx * bytes) % 16 == 0;
    return v;
  }

  View optional_view(const OptionalTensor& t, const std::string& name, DType dtype,
                     const std::vector<int64_t>& shape, bool contiguous_required, int C) {
    return t ? view(*t, name, dtype, shape, contiguous_required, C) : View{};
  }

  GateView gates(const TensorArg& t, const Geometry& geo, DType dtype) {
    device(t, "gates");
    this->dtype(t, "gates", dtype);
    if (t.shape.size() != 4 || t.shape[0] != geo.B || t.shape[1] != geo.H || t.shape[2] != geo.W ||
        t.shape[3] < 2 || t.shape[3] > kMaxFocalLevel + 1) {
      fail_value("gates", "expected shape [B, H, W, L + 1] = [" + std::to_string(geo.B) + ", " +
                              std::to_string(geo.H) + ", " + std::to_string(geo.W) + ", L + 1] with 1 <= L <= " +
                              std::to_string(kMaxFocalLevel) + ", got " + shape_str(t.shape));
    }
    GateView g;
    g.ptr = reinterpret_cast<const void*>(t.ptr);
    g.sb = t.strides[0];
    g.sy = t.strides[1];
    g.sx = t.strides[2];
    g.sl = t.strides[3];
    g.sy_bytes = g.sy * element_size(dtype);
    g.L = int(t.shape[3] - 1);
    return g;
  }

  // A depthwise kernel in tap-major fp32 [k, k, C]; returns k.
  int kernel_size(const TensorArg& t, const std::string& name, int C) {
    if (t.shape.size() != 3 || t.shape[0] != t.shape[1] || t.shape[2] != C) {
      fail_value(name, "expected a tap-major kernel [k, k, C] with C = " + std::to_string(C) + ", got " +
                           shape_str(t.shape));
    }
    const int64_t k = t.shape[0];
    if (k % 2 == 0 || k > kMaxKernelSize) {
      fail_value(name, "kernel size must be odd and at most " + std::to_string(kMaxKernelSize) + ", got " +
                           std::to_string(k));
    }
    return int(k);
  }

  // [B, H, W, C] from a level input; checks it is T or fp32.
  Geometry geometry(const TensorArg& t, const std::string& name) const {
    if (t.shape.size() != 4) fail_value(name, "expected shape [B, H, W, C], got " + shape_str(t.shape));
    for (int64_t s : t.shape) {
      if (s < 1 || s > INT32_MAX) fail_value(name, "every dim must be in [1, 2^31), got " + shape_str(t.shape));
    }
    const Geometry geo{int(t.shape[0]), int(t.shape[1]), int(t.shape[2]), int(t.shape[3])};
    // The grids of the column and pixel kernels index W x channel groups (and weight_grad k x groups) by int.
    if (int64_t(std::max(geo.W, kMaxKernelSize)) * geo.groups() > kMaxGridItems) {
      fail_value(name, "W * ceil(C / 8) must be at most " + std::to_string(kMaxGridItems) + ", got " +
                           shape_str(t.shape));
    }
    return geo;
  }

  void positive(int64_t value, const std::string& name) const {
    if (value < 1) fail_value(name, "must be >= 1, got " + std::to_string(value));
  }

  Stream stream(uintptr_t handle) const {
    Stream s;
    s.record = record_launches;
    if (s.record) return s;  // nothing runs: any device will do
    s.on_host = device_ == -1;
    s.host_sample = host_sample;
    s.stream = reinterpret_cast<cudaStream_t>(handle);
    if (!s.on_host) {
      int current = -1;
      const cudaError_t err = cudaGetDevice(&current);
      if (err != cudaSuccess) {
        throw std::runtime_error(std::string(function_) + ": no usable CUDA device: " + cudaGetErrorString(err));
      }
      if (current != device_) {
        throw py::value_error(std::string(function_) + ": the tensors are on cuda:" + std::to_string(device_) +
                              " but the current CUDA device is cuda:" + std::to_string(current) +
                              "; call under torch.cuda.device(...)");
      }
    }
    return s;
  }

 private:
  static constexpr int kUnset = -2;
  static std::string device_str(int device) { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }
  const char* function_;
  int device_ = kUnset;
};

std::vector<int64_t> pixel_shape(const Geometry& geo) { return {geo.B, geo.H, geo.W, geo.C}; }

DType level_input_dtype(const Checks& checks, const TensorArg& z_in, DType dtype) {
  if (z_in.dtype != dtype && z_in.dtype != DType::kFloat32) checks.dtype(z_in, "z_in", dtype);
  return z_in.dtype;
}

// Kernel sizes of a sweep: one per level (L from the gates), odd, at most kMaxKernelSize.
SweepLevels sweep_levels(const Checks& c, const std::vector<int>& kernel_sizes, int L) {
  if (int(kernel_sizes.size()) != L) {
    c.fail_value("kernel_sizes", "expected one per focal level (L = " + std::to_string(L) + "), got " +
                                     std::to_string(kernel_sizes.size()));
  }
  SweepLevels levels;
  levels.L = L;
  for (int l = 0; l < L; ++l) {
    const int k = kernel_sizes[l];
    if (k < 1 || k % 2 == 0 || k > kMaxKernelSize) {
      c.fail_value("kernel_sizes", "kernel size must be odd and at most " + std::to_string(kMaxKernelSize) +
                                       ", got " + std::to_string(k));
    }
    levels.k[l] = k;
  }
  return levels;
}

int sweep_chunk(const Checks& c, int chunk) {
  if (chunk < kGroup || (chunk & (chunk - 1)) != 0) {
    c.fail_value("chunk", "expected a power of two >= " + std::to_string(kGroup) + ", got " + std::to_string(chunk));
  }
  return chunk;
}

// The sweep's ring slots are exact for rows below kMaxSweepRows (RowRing::slot); taller images take the fallback.
void sweep_rows(const Checks& c, const Geometry& geo) {
  if (geo.H >= kMaxSweepRows) {
    c.fail_value("ctx", "the sweep handles images of fewer than " + std::to_string(kMaxSweepRows) + " rows, got " +
                            std::to_string(geo.H));
  }
}

// Rows per band of a sweep (>= 1; sweep_band_count counts the bands).
void check_band_rows(const Checks& c, int band_rows) {
  if (band_rows < 1) c.fail_value("band_rows", "expected a positive number of rows, got " + std::to_string(band_rows));
}

// Bands of context_bwd: `stack` whole images each (stack > 1, band_rows >= H), else ceil(H / band_rows) an image. A
// stack's band rows v (-2R .. stack period + 2R, 2R < kSlotBias) are decoded exactly while (v + kSlotBias period) period <
// 2^32 (SweepBand::row), period = stack_period(H, gap).
int64_t stacked_bands(const Checks& c, int band_rows, int stack, int gap, const Geometry& geo) {
  if (stack < 1) c.fail_value("stack", "expected a positive number of images, got " + std::to_string(stack));
  check_band_rows(c, band_rows);
  if (stack > 1 && band_rows < geo.H) {
    c.fail_value("stack", "stacks whole images: band_rows must be H = " + std::to_string(geo.H) + ", got " +
                              std::to_string(band_rows));
  }
  const int64_t period = stack_period(geo.H, gap);
  if (stack > 1 && ((int64_t(stack) + kSlotBias) * period + kSlotBias) * period >= (int64_t(1) << 32)) {
    c.fail_value("stack", std::to_string(stack) + " images of " + std::to_string(geo.H) +
                              " rows are too many rows for a band");
  }
  return sweep_band_count(geo, band_rows, stack);
}

// context_bwd's pixels per conv item: 0 (its choice), 4 or 8.
int bwd_strip(const Checks& c, int strip) {
  if (strip != 0 && strip != 4 && strip != 8) {
    c.fail_value("strip", "expected 0 (automatic), 4 or 8 pixels, got " + std::to_string(strip));
  }
  return strip;
}

int context_bwd_strip_py(int W, int chunk) {
  const Checks c("context_bwd_strip");
  c.positive(W, "W");
  return context_bwd_strip(W, sweep_chunk(c, chunk));
}

int64_t sweep_smem_bytes_py(const std::vector<int>& kernel_sizes, int W, int chunk, bool backward, int strip) {
  const Checks c("sweep_smem_bytes");
  const SweepLevels levels = sweep_levels(c, kernel_sizes, int(kernel_sizes.size()));
  c.positive(W, "W");
  sweep_chunk(c, chunk);
  bwd_strip(c, strip);
  return backward ? context_bwd_smem_bytes(levels, W, chunk, strip) : context_fwd_smem_bytes(levels, W, chunk);
}

void context_fwd_py(const TensorArg& ctx, const TensorArg& weights, const std::vector<int>& kernel_sizes,
                    const TensorArg& gates, float scale, int chunk, int band_rows, const TensorArg& ctx_local,
                    const OptionalTensor& pooled_sum, uintptr_t stream) {
  Checks c("context_fwd");
  ContextFwdParams p;
  p.geo = c.geometry(ctx, "ctx");
  const Geometry& geo = p.geo;
  sweep_rows(c, geo);
  p.dtype = ctx.dtype;
  p.ctx = c.view(ctx, "ctx", p.dtype, pixel_shape(geo), false, geo.C);
  p.gates = c.gates(gates, geo, p.dtype);
  p.levels = sweep_levels(c, kernel_sizes, p.gates.L);
  p.weights = c.view(weights, "weights", DType::kFloat32, {p.levels.taps(), geo.C}, true, geo.C);
  p.scale = scale;
  p.chunk = sweep_chunk(c, chunk);
  p.ctx_local = c.view(ctx_local, "ctx_local", p.dtype, pixel_shape(geo), true, geo.C);
  p.band_rows = band_rows;
  check_band_rows(c, band_rows);
  p.pooled_sum = c.optional_view(pooled_sum, "pooled_sum", DType::kFloat32,
                                 {sweep_band_count(geo, band_rows, 1), geo.C}, true, geo.C);
  context_fwd(p, c.stream(stream));
}

void context_bwd_py(const TensorArg& ctx, const TensorArg& weights, const std::vector<int>& kernel_sizes,
                    const TensorArg& gates, float scale, int chunk, int band_rows, const TensorArg& grad_ctx_all,
                    const TensorArg& grad_mean, const TensorArg& pooled, const TensorArg& ctx_local,
                    const TensorArg& grad_ctx, const TensorArg& weight_partial, const TensorArg& gate_partial,
                    int strip, int stack, uintptr_t stream) {
  Checks c("context_bwd");
  ContextBwdParams p;
  p.geo = c.geometry(ctx, "ctx");
  const Geometry& geo = p.geo;
  sweep_rows(c, geo);
  p.dtype = ctx.dtype;
  p.ctx = c.view(ctx, "ctx", p.dtype, pixel_shape(geo), false, geo.C);
  p.gates = c.gates(gates, geo, p.dtype);
  p.levels = sweep_levels(c, kernel_sizes, p.gates.L);
  const int taps = p.levels.taps();
  p.weights = c.view(weights, "weights", DType::kFloat32, {taps, geo.C}, true, geo.C);
  p.scale = scale;
  p.chunk = sweep_chunk(c, chunk);
  p.grad_ctx_all = c.view(grad_ctx_all, "grad_ctx_all", p.dtype, pixel_shape(geo), false, geo.C);
  p.grad_mean = c.view(grad_mean, "grad_mean", DType::kFloat32, {geo.B, geo.C}, true, geo.C);
  p.pooled = c.view(pooled, "pooled", DType::kFloat32, {geo.B, geo.C}, true, geo.C);
  p.ctx_local = c.view(ctx_local, "ctx_local", p.dtype, pixel_shape(geo), true, geo.C);
  p.grad_ctx = c.view(grad_ctx, "grad_ctx", p.dtype, pixel_shape(geo), true, geo.C);
  p.band_rows = band_rows;
  p.stack = stack;
  const int64_t bands = stacked_bands(c, band_rows, stack, p.levels.largest_radius(), geo);
  p.weight_partial = c.view(weight_partial, "weight_partial", DType::kFloat32, {bands, taps, geo.C}, true, geo.C);
  c.device(gate_partial, "gate_partial");
  c.dtype(gate_partial, "gate_partial", DType::kFloat32);
  c.shape(gate_partial, "gate_partial",
          {geo.B, geo.H, geo.W, p.gates.L + 1, gate_partial_columns(geo, p.chunk, p.stack)});
  c.contiguous(gate_partial, "gate_partial");
  p.gate_partial = reinterpret_cast<float*>(gate_partial.ptr);
  context_bwd(p, bwd_strip(c, strip), c.stream(stream));
}

// Rows per thread of a kernel on a grid of columns (>= 1): output_fwd, output_bwd, conv_level_fwd. Returns
// the number of bands, ceil(H / rows).
int64_t column_bands(const Checks& c, int rows_per_thread, const std::string& name, const Geometry& geo) {
  c.positive(rows_per_thread, name);
  return (geo.H + int64_t(rows_per_thread) - 1) / rows_per_thread;
}

// The arguments every level-at-a-time kernel takes: its input z_in, the level's weight, the gates.
template <typename LevelParams>
void check_level_args(Checks& c, LevelParams& p, const TensorArg& z_in, const TensorArg& weight,
                      const TensorArg& gates, int level, float scale) {
  p.geo = c.geometry(z_in, "z_in");
  const Geometry& geo = p.geo;
  p.dtype = gates.dtype;
  const DType z_dtype = level_input_dtype(c, z_in, p.dtype);
  p.z_in_fp32 = z_dtype == DType::kFloat32;
  p.z_in = c.view(z_in, "z_in", z_dtype, pixel_shape(geo), false, geo.C);
  p.k = c.kernel_size(weight, "weight", geo.C);
  p.weight = c.view(weight, "weight", DType::kFloat32, {p.k, p.k, geo.C}, true, geo.C);
  p.gates = c.gates(gates, geo, p.dtype);
  if (level < 0 || level >= p.gates.L) c.fail_value("level", "expected 0 <= level < L = " + std::to_string(p.gates.L));
  p.level = level;
  p.scale = scale;
}

void conv_level_fwd_py(const TensorArg& z_in, const TensorArg& weight, const TensorArg& gates, int level, float scale,
                       const OptionalTensor& acc_in, const OptionalTensor& acc_out, const OptionalTensor& z_out,
                       const OptionalTensor& ctx_out, const OptionalTensor& pool_partial, int pixels_per_strip,
                       uintptr_t stream) {
  Checks c("conv_level_fwd");
  ConvLevelFwdParams p;
  check_level_args(c, p, z_in, weight, gates, level, scale);
  const Geometry& geo = p.geo;
  const int64_t strips = column_bands(c, pixels_per_strip, "pixels_per_strip", geo) * geo.W;
  p.strip = pixels_per_strip;
  p.acc_in = c.optional_view(acc_in, "acc_in", DType::kFloat32, pixel_shape(geo), true, geo.C);
  p.acc_out = c.optional_view(acc_out, "acc_out", DType::kFloat32, pixel_shape(geo), true, geo.C);
  p.z_out = c.optional_view(z_out, "z_out", DType::kFloat32, pixel_shape(geo), true, geo.C);
  p.ctx_out = c.optional_view(ctx_out, "ctx_out", p.dtype, pixel_shape(geo), true, geo.C);
  p.pool_partial = c.optional_view(pool_partial, "pool_partial", DType::kFloat32, {geo.B, strips, geo.C}, true, geo.C);
  if (z_out && z_out->ptr == z_in.ptr) c.fail_value("z_out", "must not alias z_in (neighbours are read)");
  conv_level_fwd(p, c.stream(stream));
}

// The arguments of the modulator epilogue (output_fwd: the forward's out and the backward's grad_q).
ModulatorArgs check_modulator_args(Checks& c, const Geometry& geo, DType dtype, const TensorArg& linear,
                                   const TensorArg& gates, const TensorArg& global_term, float scale) {
  ModulatorArgs m;
  m.linear = c.view(linear, "linear", dtype, pixel_shape(geo), true, geo.C);
  m.gates = c.gates(gates, geo, dtype);
  m.global_term = c.view(global_term, "global_term", DType::kFloat32, {geo.B, geo.C}, true, geo.C);
  m.scale = scale;
  return m;
}

void output_fwd_py(const TensorArg& q, const TensorArg& linear, const TensorArg& gates,
                   const TensorArg& global_term, float scale, const TensorArg& out, int rows_per_thread,
                   uintptr_t stream) {
  Checks c("output_fwd");
  OutputFwdParams p;
  p.geo = c.geometry(q, "q");
  const Geometry& geo = p.geo;
  p.dtype = q.dtype;
  p.q = c.view(q, "q", p.dtype, pixel_shape(geo), false, geo.C);
  p.mod = check_modulator_args(c, geo, p.dtype, linear, gates, global_term, scale);
  p.out = c.view(out, "out", p.dtype, pixel_shape(geo), true, geo.C);
  column_bands(c, rows_per_thread, "rows_per_thread", geo);
  p.rows = rows_per_thread;
  output_fwd(p, c.stream(stream));
}

void reduce_sum_py(const TensorArg& input, const TensorArg& out, float scale, uintptr_t stream) {
  Checks c("reduce_sum");
  c.device(input, "input");
  c.dtype(input, "input", DType::kFloat32);
  if (input.shape.size() != 3) {
    c.fail_value("input", "expected shape [outer, rows, cols], got " + shape_str(input.shape));
  }
  c.device(out, "out");
  c.dtype(out, "out", DType::kFloat32);
  c.shape(out, "out", {input.shape[0], input.shape[2]});
  c.contiguous(out, "out");
  for (int d = 0; d < 3; ++d) {
    if (input.shape[d] > kMaxGridItems) {
      c.fail_value("input", "every dim must be at most " + std::to_string(kMaxGridItems) + ", got " +
                                shape_str(input.shape));
    }
  }
  ReduceParams p;
  p.in = reinterpret_cast<const float*>(input.ptr);
  p.out = reinterpret_cast<float*>(out.ptr);
  p.outer = int(input.shape[0]);
  p.rows = int(input.shape[1]);
  p.cols = int(input.shape[2]);
  p.so = input.strides[0];
  p.sr = input.strides[1];
  p.sm = input.strides[2];
  p.scale = scale;
  reduce_sum(p, c.stream(stream));
}

void output_bwd_py(const TensorArg& grad_out, const TensorArg& q, const TensorArg& gates,
                   const TensorArg& grad_modulator, const TensorArg& partial, int rows_per_thread, uintptr_t stream) {
  Checks c("output_bwd");
  OutputBwdParams p;
  p.geo = c.geometry(q, "q");
  const Geometry& geo = p.geo;
  p.dtype = q.dtype;
  p.grad_out = c.view(grad_out, "grad_out", p.dtype, pixel_shape(geo), false, geo.C);
  p.q = c.view(q, "q", p.dtype, pixel_shape(geo), false, geo.C);
  p.gates = c.gates(gates, geo, p.dtype);
  p.grad_modulator = c.view(grad_modulator, "grad_modulator", p.dtype, pixel_shape(geo), true, geo.C);
  const int64_t strips = column_bands(c, rows_per_thread, "rows_per_thread", geo) * geo.W;
  p.rows = rows_per_thread;
  p.partial = c.view(partial, "partial", DType::kFloat32, {geo.B, strips, 2, geo.C}, true, geo.C);
  output_bwd(p, c.stream(stream));
}

void conv_level_bwd_py(const TensorArg& z_in, const TensorArg& weight, const TensorArg& gates, int level, float scale,
                       const TensorArg& grad_ctx_all, const OptionalTensor& grad_mean, const OptionalTensor& pooled,
                       const OptionalTensor& grad_pre_next, const OptionalTensor& weight_next,
                       const TensorArg& grad_pre, const TensorArg& gate_partial, uintptr_t stream) {
  Checks c("conv_level_bwd");
  ConvLevelBwdParams p;
  check_level_args(c, p, z_in, weight, gates, level, scale);
  const Geometry& geo = p.geo;
  p.grad_ctx_all = c.view(grad_ctx_all, "grad_ctx_all", p.dtype, pixel_shape(geo), true, geo.C);
  const bool last = level == p.gates.L - 1;
  if (last != bool(grad_mean) || last != bool(pooled) || last == bool(grad_pre_next) || last == bool(weight_next)) {
    c.fail_value("level", "the last level takes grad_mean and pooled, the others grad_pre_next and weight_next");
  }
  p.grad_mean = c.optional_view(grad_mean, "grad_mean", DType::kFloat32, {geo.B, geo.C}, true, geo.C);
  p.pooled = c.optional_view(pooled, "pooled", DType::kFloat32, {geo.B, geo.C}, true, geo.C);
  p.k_next = weight_next ? c.kernel_size(*weight_next, "weight_next", geo.C) : 0;
  p.weight_next =
      c.optional_view(weight_next, "weight_next", DType::kFloat32, {p.k_next, p.k_next, geo.C}, true, geo.C);
  p.grad_pre_next =
      c.optional_view(grad_pre_next, "grad_pre_next", DType::kFloat32, pixel_shape(geo), true, geo.C);
  p.grad_pre = c.view(grad_pre, "grad_pre", DType::kFloat32, pixel_shape(geo), true, geo.C);
  if (grad_pre_next && grad_pre_next->ptr == grad_pre.ptr) {
    c.fail_value("grad_pre", "must not alias grad_pre_next (neighbours are read)");
  }
  c.device(gate_partial, "gate_partial");
  c.dtype(gate_partial, "gate_partial", DType::kFloat32);
  c.shape(gate_partial, "gate_partial", {geo.B, geo.H, geo.W, p.gates.L + 1, geo.groups()});
  c.contiguous(gate_partial, "gate_partial");
  p.gate_partial = reinterpret_cast<float*>(gate_partial.ptr);
  conv_level_bwd(p, c.stream(stream));
}

void weight_grad_py(const TensorArg& z_in, const TensorArg& grad_pre, const TensorArg& partial, int rows_per_strip,
                    uintptr_t stream) {
  Checks c("weight_grad");
  WeightGradParams p;
  p.geo = c.geometry(z_in, "z_in");
  const Geometry& geo = p.geo;
  p.z_dtype = z_in.dtype;
  p.z_in = c.view(z_in, "z_in", p.z_dtype, pixel_shape(geo), false, geo.C);
  p.grad_pre = c.view(grad_pre, "grad_pre", DType::kFloat32, pixel_shape(geo), true, geo.C);
  c.positive(rows_per_strip, "rows_per_strip");
  p.rows = rows_per_strip;
  const int64_t row_strips = (geo.H + p.rows - 1) / p.rows;
  if (partial.shape.size() != 4) {
    c.fail_value("partial", "expected shape [B * row_strips, k, k, C], got " + shape_str(partial.shape));
  }
  p.k = int(partial.shape[1]);
  if (p.k % 2 == 0 || p.k > kMaxKernelSize) {
    c.fail_value("partial", "kernel size must be odd and at most 13, got " + std::to_string(p.k));
  }
  p.partial = c.view(partial, "partial", DType::kFloat32, {geo.B * row_strips, p.k, p.k, geo.C}, true, geo.C);
  weight_grad(p, c.stream(stream));
}

void conv_adjoint_py(const TensorArg& grad_pre, const TensorArg& weight, const TensorArg& grad_in, uintptr_t stream) {
  Checks c("conv_adjoint");
  ConvAdjointParams p;
  p.geo = c.geometry(grad_pre, "grad_pre");
  const Geometry& geo = p.geo;
  p.dtype = grad_in.dtype;
  p.grad_pre = c.view(grad_pre, "grad_pre", DType::kFloat32, pixel_shape(geo), true, geo.C);
  p.k = c.kernel_size(weight, "weight", geo.C);
  p.weight = c.view(weight, "weight", DType::kFloat32, {p.k, p.k, geo.C}, true, geo.C);
  p.grad_in = c.view(grad_in, "grad_in", p.dtype, pixel_shape(geo), true, geo.C);
  conv_adjoint(p, c.stream(stream));
}

}  // namespace
}  // namespace focalfast

PYBIND11_MODULE(_C, m) {
  using namespace focalfast;
  using namespace pybind11::literals;
  m.doc() = "focalfast CUDA kernels for focal modulation (plain CUDA + pybind11; see csrc/)";

  // module_local: a second copy of this module (a stale build next to a fresh one) registers its own types.
  py::enum_<DType>(m, "DType", py::module_local())
      .value("float32", DType::kFloat32)
      .value("float16", DType::kFloat16)
      .value("bfloat16", DType::kBFloat16);

  py::class_<TensorArg>(m, "TensorArg", py::module_local(),
                        "A tensor as the kernels see it: pointer, dtype, shape, strides, device (-1: CPU)")
      .def(py::init<uintptr_t, DType, std::vector<int64_t>, std::vector<int64_t>, int>(), "ptr"_a, "dtype"_a,
           "shape"_a, "strides"_a, "device"_a)
      .def_readonly("shape", &TensorArg::shape)
      .def_readonly("strides", &TensorArg::strides);

  m.def("version", [] { return std::string(kVersion); }, "Extension version.");
  m.def("source_hash", [] { return std::string(FOCALFAST_SOURCE_HASH); },
        "Hash of the csrc/ sources and build flags this module was built from.");
  m.def("kernel_names", &kernel_names, "Names of the launchers.");
  m.def(
      "set_record_launches", [](bool on) { record_launches = on; }, "on"_a,
      "Launchers record their kernel launches (take them with take_recorded_launches) instead of running them.");
  m.def(
      "set_host_sample", [](int64_t n) { host_sample = n < 1 ? 1 : n; }, "n"_a,
      "CPU tensors: run only the first 1/n of each launch's threads or blocks (e.g. one image of n; loop counts).");
  m.def(
      "take_recorded_launches",
      [] {
        py::list out;
        for (const LaunchRecord& r : recorded_launches()) {
          out.append(py::dict("name"_a = r.name, "op"_a = r.op, "blocks"_a = r.blocks, "threads"_a = r.threads,
                              "smem_bytes"_a = r.smem_bytes));
        }
        recorded_launches().clear();
        return out;
      },
      "The launches recorded since the last call: name, op (the kernel body's C++ type), blocks, threads, "
      "smem_bytes (dynamic).");
  m.def("context_bwd_strip", &context_bwd_strip_py, "W"_a, "chunk"_a,
        "Pixels per conv item that context_bwd chooses for images W pixels wide in chunks of chunk channels.");
  m.def("sweep_smem_bytes", &sweep_smem_bytes_py, "kernel_sizes"_a, "W"_a, "chunk"_a, "backward"_a, "strip"_a = 0,
        "Shared memory of one block of context_fwd (backward=False) or context_bwd (strip: its pixels per item, "
        "0 = automatic), in bytes; 2**63 - 1 where context_bwd cannot run the schedule (more conv items than "
        "threads).");
  m.def("context_fwd", &context_fwd_py, "ctx"_a, "weights"_a, "kernel_sizes"_a, "gates"_a, "scale"_a, "chunk"_a,
        "band_rows"_a, "ctx_local"_a, "pooled_sum"_a, "stream"_a);
  m.def("context_bwd", &context_bwd_py, "ctx"_a, "weights"_a, "kernel_sizes"_a, "gates"_a, "scale"_a, "chunk"_a,
        "band_rows"_a, "grad_ctx_all"_a, "grad_mean"_a, "pooled"_a, "ctx_local"_a, "grad_ctx"_a,
        "weight_partial"_a, "gate_partial"_a, "strip"_a, "stack"_a, "stream"_a);
  m.def("conv_level_fwd", &conv_level_fwd_py, "z_in"_a, "weight"_a, "gates"_a, "level"_a, "scale"_a, "acc_in"_a,
        "acc_out"_a, "z_out"_a, "ctx_out"_a, "pool_partial"_a, "pixels_per_strip"_a, "stream"_a);
  m.def("output_fwd", &output_fwd_py, "q"_a, "linear"_a, "gates"_a, "global_term"_a, "scale"_a, "out"_a,
        "rows_per_thread"_a, "stream"_a);
  m.def("reduce_sum", &reduce_sum_py, "input"_a, "out"_a, "scale"_a, "stream"_a);
  m.def("output_bwd", &output_bwd_py, "grad_out"_a, "q"_a, "gates"_a, "grad_modulator"_a, "partial"_a,
        "rows_per_thread"_a, "stream"_a);
  m.def("conv_level_bwd", &conv_level_bwd_py, "z_in"_a, "weight"_a, "gates"_a, "level"_a, "scale"_a,
        "grad_ctx_all"_a, "grad_mean"_a, "pooled"_a, "grad_pre_next"_a, "weight_next"_a, "grad_pre"_a,
        "gate_partial"_a, "stream"_a);
  m.def("weight_grad", &weight_grad_py, "z_in"_a, "grad_pre"_a, "partial"_a, "rows_per_strip"_a, "stream"_a);
  m.def("conv_adjoint", &conv_adjoint_py, "grad_pre"_a, "weight"_a, "grad_in"_a, "stream"_a);
}
