// Index bookkeeping and the residual epilogue of spatial sparse execution, in one call each,
// and the column selection of channel skipping's weight slicing.
// The PyTorch implementation in laudnet/engine/spatial.py, laudnet/engine/branch.py,
// laudnet/sparse/pixels.py and laudnet/sparse/packed.py defines the semantics; these kernels
// compute exactly the same rows, taps and columns (tests compare both).
#include <torch/extension.h>

#include <cstdint>
#include <vector>

namespace {

struct Unit {
  int64_t kernel, stride, padding, in_h, in_w, out_h, out_w;
  bool gathers;  // whether the unit reads gathered taps when it runs on a subset of pixels
};

// Rows and taps of every unit for the block output pixels of a coarse patch mask.
// Returns (active output rows, [rows per unit or empty tensor for all], [taps per unit or empty]).
std::tuple<torch::Tensor, std::vector<torch::Tensor>, std::vector<torch::Tensor>> spatial_rows(
    torch::Tensor coarse, int64_t patch, std::vector<std::vector<int64_t>> geometry, double dense_fraction) {
  TORCH_CHECK(coarse.dim() == 3 && coarse.device().is_cpu(), "coarse mask must be a (B, rows, cols) CPU tensor");
  auto mask_in = coarse.to(torch::kFloat).contiguous();
  const float* m = mask_in.data_ptr<float>();
  const int64_t batch = coarse.size(0), grid_h = coarse.size(1), grid_w = coarse.size(2);
  std::vector<Unit> units;
  for (auto& g : geometry) units.push_back({g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7] != 0});
  const int64_t n = units.size();
  const int64_t out_h = units.back().out_h, out_w = units.back().out_w;

  // the block output mask: nearest upsampling of the patches, cropped
  std::vector<std::vector<uint8_t>> masks(n);
  std::vector<uint8_t> mask(batch * out_h * out_w);
  std::vector<int64_t> active;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t y = 0; y < out_h; ++y)
      for (int64_t x = 0; x < out_w; ++x) {
        const int64_t i = (b * out_h + y) * out_w + x;
        mask[i] = m[(b * grid_h + y / patch) * grid_w + x / patch] > 0;
        if (mask[i]) active.push_back(i);
      }

  std::vector<bool> full(n, false);
  std::vector<std::vector<int64_t>> rows(n);
  bool is_full = false;
  for (int64_t i = n - 1; i >= 0; --i) {
    const Unit& u = units[i];
    const int64_t total = batch * u.out_h * u.out_w;
    if (!is_full) {
      int64_t count = 0;
      for (uint8_t v : mask) count += v;
      is_full = count == total;
      if (!is_full && count >= dense_fraction * total) {
        std::fill(mask.begin(), mask.end(), 1);
        is_full = true;
      } else if (!is_full) {
        for (int64_t j = 0; j < total; ++j)
          if (mask[j]) rows[i].push_back(j);
      }
    }
    full[i] = is_full;
    masks[i] = mask;
    if (i > 0) {  // the receptive field: the input pixels this unit needs
      std::vector<uint8_t> needed(batch * u.in_h * u.in_w, 0);
      if (is_full && u.kernel >= u.stride) {
        std::fill(needed.begin(), needed.end(), 1);
      } else {
        is_full = false;
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t oy = 0; oy < u.out_h; ++oy)
            for (int64_t ox = 0; ox < u.out_w; ++ox) {
              if (!mask[(b * u.out_h + oy) * u.out_w + ox]) continue;
              for (int64_t ky = 0; ky < u.kernel; ++ky) {
                const int64_t iy = oy * u.stride - u.padding + ky;
                if (iy < 0 || iy >= u.in_h) continue;
                for (int64_t kx = 0; kx < u.kernel; ++kx) {
                  const int64_t ix = ox * u.stride - u.padding + kx;
                  if (ix >= 0 && ix < u.in_w) needed[(b * u.in_h + iy) * u.in_w + ix] = 1;
                }
              }
            }
      }
      mask.swap(needed);
    }
  }

  auto long_opts = torch::TensorOptions().dtype(torch::kLong);
  auto as_tensor = [&](const std::vector<int64_t>& v) {
    auto t = torch::empty({(int64_t)v.size()}, long_opts);
    std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
    return t;
  };
  std::vector<torch::Tensor> row_tensors, tap_tensors;
  for (int64_t i = 0; i < n; ++i) {
    const Unit& u = units[i];
    row_tensors.push_back(full[i] ? torch::Tensor() : as_tensor(rows[i]));
    if (full[i] || !u.gathers) {
      tap_tensors.push_back(torch::Tensor());
      continue;
    }
    const bool source_full = i == 0 || full[i - 1];
    const int64_t total_in = batch * u.in_h * u.in_w;
    std::vector<int64_t> position;
    int64_t pad = total_in;
    if (!source_full) {  // compact source: its rows, then a zero row
      pad = rows[i - 1].size();
      position.assign(total_in, pad);
      for (int64_t j = 0; j < pad; ++j) position[rows[i - 1][j]] = j;
    }
    const int64_t k2 = u.kernel * u.kernel;
    auto taps = torch::empty({(int64_t)rows[i].size(), k2}, long_opts);
    int64_t* t = taps.data_ptr<int64_t>();
    const int64_t per_sample = u.out_h * u.out_w;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      const int64_t r = rows[i][j], b = r / per_sample, oy = (r % per_sample) / u.out_w, ox = r % u.out_w;
      for (int64_t ky = 0; ky < u.kernel; ++ky)
        for (int64_t kx = 0; kx < u.kernel; ++kx) {
          const int64_t iy = oy * u.stride - u.padding + ky, ix = ox * u.stride - u.padding + kx;
          int64_t value = pad;
          if (iy >= 0 && iy < u.in_h && ix >= 0 && ix < u.in_w) {
            const int64_t index = (b * u.in_h + iy) * u.in_w + ix;
            value = source_full ? index : position[index];
          }
          *t++ = value;
        }
    }
    tap_tensors.push_back(taps);
  }
  return {as_tensor(active), row_tensors, tap_tensors};
}

// out = act(identity + h) at ``rows``, act(identity) elsewhere (or identity itself when
// ``clean``), written into ``identity`` when ``inplace``. ``h`` is overwritten.
torch::Tensor add_rows(torch::Tensor identity, torch::Tensor h, torch::Tensor rows, bool relu, bool inplace,
                       bool clean) {
  TORCH_CHECK(identity.is_contiguous() && h.is_contiguous() && identity.scalar_type() == torch::kFloat &&
              h.scalar_type() == torch::kFloat, "add_rows takes contiguous float32 rows");
  const int64_t m = rows.size(0), channels = identity.size(1);
  const int64_t* r = rows.data_ptr<int64_t>();
  const float* ident = identity.data_ptr<float>();
  float* added = h.data_ptr<float>();
  at::parallel_for(0, m, 64, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const float* src = ident + r[j] * channels;
      float* dst = added + j * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const float v = src[c] + dst[c];
        dst[c] = relu && v < 0.f ? 0.f : v;
      }
    }
  });
  torch::Tensor out = inplace ? identity : (relu && !clean ? torch::relu(identity) : identity.clone());
  if (inplace && relu && !clean) out.relu_();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, m, 64, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j)
      std::copy(added + j * channels, added + (j + 1) * channels, o + r[j] * channels);
  });
  return out;
}

// Rows of ``source`` (N, C) at ``taps`` (m, k2): (m, k2, C); taps >= N (zero padding, or
// pixels that were not computed) read zeros. One pass, no index fix-up.
torch::Tensor gather_rows(torch::Tensor source, torch::Tensor taps) {
  TORCH_CHECK(source.dim() == 2 && source.is_contiguous() && source.scalar_type() == torch::kFloat,
              "gather_rows takes contiguous float32 (N, C) rows");
  TORCH_CHECK(taps.dim() == 2 && taps.scalar_type() == torch::kLong, "gather_rows takes (m, k2) int64 taps");
  auto index = taps.contiguous();
  const int64_t n = source.size(0), channels = source.size(1), m = index.size(0), k2 = index.size(1);
  auto out = torch::empty({m, k2, channels}, source.options());
  const float* src = source.data_ptr<float>();
  const int64_t* t = index.data_ptr<int64_t>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, m * k2, 256, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t r = t[j];
      float* o = dst + j * channels;
      if (r >= 0 && r < n)
        std::copy(src + r * channels, src + (r + 1) * channels, o);
      else
        std::fill(o, o + channels, 0.f);
    }
  });
  return out;
}

// Columns ``index`` of the (R, C) float32 ``source``: (R, K). PyTorch's ``index_select`` on
// the last dimension copies element by element through its generic indexing (measured at
// about 0.5 GB/s on a 3x3 convolution's weight). Here each row is a loop over the columns,
// or, when the columns come in long runs of adjacent ones (channel groups), one copy per run.
torch::Tensor select_columns(torch::Tensor source, torch::Tensor index) {
  TORCH_CHECK(source.dim() == 2 && source.is_contiguous() && source.scalar_type() == torch::kFloat,
              "select_columns takes contiguous float32 (R, C) rows");
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == torch::kLong, "select_columns takes (K,) int64 columns");
  auto columns = index.contiguous();
  const int64_t rows = source.size(0), width = source.size(1), k = columns.size(0);
  const int64_t* c = columns.data_ptr<int64_t>();
  std::vector<int64_t> run_start, run_length;  // runs of adjacent columns
  for (int64_t j = 0; j < k; ++j) {
    TORCH_CHECK(c[j] >= 0 && c[j] < width, "select_columns: column ", c[j], " out of range for ", width, " columns");
    if (j > 0 && c[j] == c[j - 1] + 1) {
      ++run_length.back();
    } else {
      run_start.push_back(c[j]);
      run_length.push_back(1);
    }
  }
  const int64_t runs = run_start.size();
  const bool by_runs = k >= 16 * runs;  // a copy call per run pays off from about 16 columns a run
  auto out = torch::empty({rows, k}, source.options());
  const float* src = source.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* s = src + r * width;
      float* o = dst + r * k;
      if (by_runs) {
        for (int64_t q = 0; q < runs; ++q) {
          std::copy(s + run_start[q], s + run_start[q] + run_length[q], o);
          o += run_length[q];
        }
      } else {
        for (int64_t j = 0; j < k; ++j) o[j] = s[c[j]];
      }
    }
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spatial_rows", &spatial_rows, "rows and taps of every unit of a spatial block");
  m.def("add_rows", &add_rows, "residual add and activation at some pixel rows");
  m.def("gather_rows", &gather_rows, "gathered taps, zeros for padding taps");
  m.def("select_columns", &select_columns, "some columns of a matrix");
}
