"""oneDNN convolutions in JAX (CPU) through XLA FFI custom calls, for ``bench/onednn_conv_ab.py``.

``conv_general_dilated`` is a drop-in for ``jax.lax.conv_general_dilated`` (pass it to
``nnx.Conv(..., conv_general_dilated=...)``): float32 NHWC x HWIO convolutions with a square
kernel and stride, no dilation, one group and the same padding on both spatial axes run as
oneDNN primitives (``onednn_conv.cc``); the gradient is a ``jax.custom_vjp`` whose backward is
oneDNN's backward-data and backward-weights primitives.  Anything else goes to XLA.

``build()`` compiles ``onednn_conv.cc`` with g++ against Debian's oneDNN 2.6
(``apt-get install libdnnl-dev``) and jaxlib's FFI headers into ``$JAXDIFF_CACHE/onednn``.
A benchmark, not a jaxdiff feature: jaxdiff itself uses XLA's convolutions.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "onednn_conv.cc")
HEADER = "/usr/include/oneapi/dnnl/dnnl.hpp"
TARGETS = {"onednn_conv_fwd": "OnednnConvFwd", "onednn_conv_bwd_data": "OnednnConvBwdData",
           "onednn_conv_bwd_weights": "OnednnConvBwdWeights"}


@functools.cache
def build() -> ctypes.CDLL:
    """Compiles (once per source version) and loads the FFI library; registers its targets."""
    if not os.path.exists(HEADER):
        raise RuntimeError(f"{HEADER} not found: install oneDNN's headers and library "
                           "(Debian: apt-get install libdnnl-dev)")
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read() + jax.ffi.include_dir().encode()).hexdigest()[:12]
    cache = os.path.join(os.environ.get("JAXDIFF_CACHE", os.path.expanduser("~/.cache/jaxdiff")),
                         "onednn")
    lib_path = os.path.join(cache, f"libonednn_conv_{digest}.so")
    if not os.path.exists(lib_path):
        os.makedirs(cache, exist_ok=True)
        tmp = f"{lib_path}.{os.getpid()}.tmp"
        subprocess.run(["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
                        f"-I{jax.ffi.include_dir()}", SOURCE, "-o", tmp, "-ldnnl"], check=True)
        os.replace(tmp, lib_path)
    lib = ctypes.cdll.LoadLibrary(lib_path)
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    lib.OnednnImplInfo.restype = ctypes.c_char_p
    lib.OnednnImplInfo.argtypes = [ctypes.c_int64] * 9 + [ctypes.c_int]
    return lib


def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """XLA's 'SAME' padding (low, high) of one spatial axis: output ceil(size / stride)."""
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def implementations(shape, stride: int, lo: int, hi: int) -> list[str]:
    """The oneDNN implementations (forward, backward data, backward weights) chosen for a
    convolution of x (N, H, W, Cin) with a k x k kernel to Cout; ``shape`` = (N, H, W, Cin,
    Cout, k)."""
    lib = build()
    return [lib.OnednnImplInfo(*shape, stride, lo, hi, which).decode().split(",")[0]
            for which in range(3)]


def _call(target: str, out_shape, a, b, stride: int, lo: int, hi: int):
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, jnp.float32))(
        a, b, stride=np.int64(stride), pad_lo=np.int64(lo), pad_hi=np.int64(hi))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x, w, stride: int, lo: int, hi: int):
    """y (N, Ho, Wo, Cout) = x (N, H, W, Cin) * w (k, k, Cin, Cout), float32, stride and
    padding (lo, hi) on both spatial axes."""
    n, h, width, _ = x.shape
    k, cout = w.shape[0], w.shape[3]
    ho, wo = (h + lo + hi - k) // stride + 1, (width + lo + hi - k) // stride + 1
    return _call("onednn_conv_fwd", (n, ho, wo, cout), x, w, stride, lo, hi)


def _conv_fwd(x, w, stride, lo, hi):
    return conv(x, w, stride, lo, hi), (x, w)


def _conv_bwd(stride, lo, hi, residuals, dy):
    x, w = residuals
    return (_call("onednn_conv_bwd_data", x.shape, dy, w, stride, lo, hi),
            _call("onednn_conv_bwd_weights", w.shape, x, dy, stride, lo, hi))


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         **kwargs):
    """``lax.conv_general_dilated`` with the cases above routed to oneDNN (flax's NHWC / HWIO
    dimension numbers assumed for 4-D inputs)."""
    build()
    s, k = window_strides[0], rhs.shape[0]
    pads = None
    if (lhs.ndim == 4 and lhs.dtype == rhs.dtype == jnp.float32 and rhs.shape[1] == k
            and tuple(window_strides) == (s, s) and feature_group_count == 1
            and batch_group_count == 1 and tuple(lhs_dilation or (1, 1)) == (1, 1)
            and tuple(rhs_dilation or (1, 1)) == (1, 1)):
        pads = ([same_padding(lhs.shape[1], k, s), same_padding(lhs.shape[2], k, s)]
                if padding == "SAME" else
                None if isinstance(padding, str) else [tuple(p) for p in padding])
    if pads is None or pads[0] != pads[1]:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        batch_group_count, precision, preferred_element_type,
                                        **kwargs)
    return conv(lhs, rhs, s, pads[0][0], pads[0][1])
