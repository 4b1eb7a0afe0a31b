// 2-D convolution through oneDNN as XLA FFI custom calls, for bench/onednn_conv_ab.py: forward,
// backward to data, backward to weights; float32, NHWC activations, HWIO weights (JAX's
// layouts, used by oneDNN in place), square kernel and stride, the same padding on both spatial
// axes.  oneDNN picks the weights' layout (format_tag::any); HWIO weights are reordered into it
// per call.  Primitives are built once per shape.  Written against oneDNN 2.6 (Debian's
// libdnnl-dev) and the XLA FFI headers shipped with jaxlib.
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// n, h, w, ci, co, k, stride, pad_lo, pad_hi
using Key = std::array<int64_t, 9>;

struct Prims {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_d_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_w_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_d;
  dnnl::convolution_backward_weights bwd_w;
  memory::desc x_md, y_md, w_user_md;
};

Prims& Get(const Key& key) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Prims>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto [n, h, w, ci, co, k, s, lo, hi] = key;
  int64_t ho = (h + lo + hi - k) / s + 1, wo = (w + lo + hi - k) / s + 1;
  auto p = std::make_unique<Prims>();
  p->x_md = memory::desc({n, ci, h, w}, dt::f32, tag::nhwc);
  p->y_md = memory::desc({n, co, ho, wo}, dt::f32, tag::nhwc);
  p->w_user_md = memory::desc({co, ci, k, k}, dt::f32, tag::hwio);
  memory::desc w_any({co, ci, k, k}, dt::f32, tag::any);
  memory::dims strides = {s, s}, pl = {lo, lo}, pr = {hi, hi};
  dnnl::convolution_forward::desc fd(dnnl::prop_kind::forward_training,
                                     dnnl::algorithm::convolution_direct, p->x_md, w_any,
                                     p->y_md, strides, pl, pr);
  p->fwd_pd = dnnl::convolution_forward::primitive_desc(fd, Engine());
  dnnl::convolution_backward_data::desc bd(dnnl::algorithm::convolution_direct, p->x_md, w_any,
                                           p->y_md, strides, pl, pr);
  p->bwd_d_pd = dnnl::convolution_backward_data::primitive_desc(bd, Engine(), p->fwd_pd);
  dnnl::convolution_backward_weights::desc bw(dnnl::algorithm::convolution_direct, p->x_md,
                                              w_any, p->y_md, strides, pl, pr);
  p->bwd_w_pd = dnnl::convolution_backward_weights::primitive_desc(bw, Engine(), p->fwd_pd);
  p->fwd = dnnl::convolution_forward(p->fwd_pd);
  p->bwd_d = dnnl::convolution_backward_data(p->bwd_d_pd);
  p->bwd_w = dnnl::convolution_backward_weights(p->bwd_w_pd);
  Prims& ref = *p;
  cache.emplace(key, std::move(p));
  return ref;
}

using Dims = ffi::Buffer<ffi::F32>::Dimensions;
Key MakeKey(Dims x, Dims w, int64_t s, int64_t lo, int64_t hi) {
  return {x[0], x[1], x[2], x[3], w[3], w[0], s, lo, hi};
}

// Weights in the layout the primitive wants: a reorder from HWIO unless it is already HWIO.
memory Weights(const memory::desc& want, const memory::desc& user_md, void* data,
               dnnl::stream& st) {
  memory user(user_md, Engine(), data);
  if (want == user_md) return user;
  memory out(want, Engine());
  dnnl::reorder(user, out).execute(st, user, out);
  return out;
}

// One primitive at a time: each already uses every core through OpenMP, and XLA may issue
// independent custom calls (the two backward convolutions) from two of its threads at once.
std::mutex& ExecMutex() {
  static std::mutex mu;
  return mu;
}

// Runs body(stream) under the execution lock; a oneDNN error becomes an FFI error, not a crash.
template <typename Body>
ffi::Error Run(Body body) {
  try {
    std::lock_guard<std::mutex> exec_lock(ExecMutex());
    dnnl::stream st(Engine());
    body(st);
    st.wait();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
}

ffi::Error FwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t lo, int64_t hi) {
  return Run([&](dnnl::stream& st) {
    Prims& p = Get(MakeKey(x.dimensions(), w.dimensions(), stride, lo, hi));
    memory wm = Weights(p.fwd_pd.weights_desc(), p.w_user_md, w.untyped_data(), st);
    memory xm(p.x_md, Engine(), x.untyped_data()), ym(p.y_md, Engine(), y->untyped_data());
    p.fwd.execute(st, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}});
  });
}

ffi::Error BwdDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t lo, int64_t hi) {
  return Run([&](dnnl::stream& st) {
    Prims& p = Get(MakeKey(dx->dimensions(), w.dimensions(), stride, lo, hi));
    memory wm = Weights(p.bwd_d_pd.weights_desc(), p.w_user_md, w.untyped_data(), st);
    memory dym(p.y_md, Engine(), dy.untyped_data()), dxm(p.x_md, Engine(), dx->untyped_data());
    p.bwd_d.execute(st, {{DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_WEIGHTS, wm},
                         {DNNL_ARG_DIFF_SRC, dxm}});
  });
}

ffi::Error BwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t stride, int64_t lo,
                          int64_t hi) {
  return Run([&](dnnl::stream& st) {
    Prims& p = Get(MakeKey(x.dimensions(), dw->dimensions(), stride, lo, hi));
    memory xm(p.x_md, Engine(), x.untyped_data()), dym(p.y_md, Engine(), dy.untyped_data());
    memory user(p.w_user_md, Engine(), dw->untyped_data());
    const memory::desc& want = p.bwd_w_pd.diff_weights_desc();
    memory dwm = want == p.w_user_md ? user : memory(want, Engine());
    p.bwd_w.execute(st, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym},
                         {DNNL_ARG_DIFF_WEIGHTS, dwm}});
    if (!(want == p.w_user_md)) dnnl::reorder(dwm, user).execute(st, dwm, user);
  });
}

}  // namespace

// All three take two float32 buffers, return one, and carry stride and padding as attributes.
auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride")
      .Attr<int64_t>("pad_lo")
      .Attr<int64_t>("pad_hi");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, FwdImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, BwdDataImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, BwdWeightsImpl, ConvBinding());

extern "C" const char* OnednnImplInfo(int64_t n, int64_t h, int64_t w, int64_t ci, int64_t co,
                                      int64_t k, int64_t s, int64_t lo, int64_t hi, int which) {
  Prims& p = Get({n, h, w, ci, co, k, s, lo, hi});
  static thread_local std::string out;  // the implementation oneDNN chose, e.g. brgconv:avx512_core
  out = which == 0 ? p.fwd_pd.impl_info_str()
        : which == 1 ? p.bwd_d_pd.impl_info_str() : p.bwd_w_pd.impl_info_str();
  return out.c_str();
}
