"""The FID Inception-v3 network (pytorch-fid / TTUR "pt_inception-2015-12-05") in Flax NNX.

Protocol (what pytorch-fid does to PNG files, reproduced on [-1, 1] arrays):
  1. x in [-1, 1] -> uint8 as ``clip(round(x * 127.5 + 127.5))`` (the project's image
     convention; a sample saved as PNG and read back gives the same bytes), then / 255 -> [0, 1].
     Grayscale images are repeated to 3 channels (PIL's ``convert('RGB')``).
  2. Resize to 299 x 299 with PyTorch's ``F.interpolate(x, size=(299, 299), mode='bilinear',
     align_corners=False)`` (no antialiasing): output pixel j samples the input at
     s = max((j + 0.5) * in / out - 0.5, 0) with weights (1 - frac(s), frac(s)) on pixels
     (floor(s), min(floor(s) + 1, in - 1)) -- ``bilinear_resize_matrix``.
  3. Scale to [-1, 1] by 2 x - 1 and run the network; the features are the 2048-d output of the
     final global average pool ("pool3"); the logits are the 1008-way ``fc`` layer (used for the
     Inception Score).

Network: torchvision's Inception-v3 layout (Szegedy et al. 2016, Fig. 5-7) with the changes
pytorch-fid makes to match the TensorFlow FID graph (Heusel et al. 2017):
  * every convolution is bias-free and followed by BatchNorm with eps = 1e-3 and ReLU;
  * the average pools inside Mixed_5b-d (A), Mixed_6b-e (C) and Mixed_7b (E) exclude padding
    from the count (``count_include_pad=False``);
  * Mixed_7c (the last E block) pools its branch with a 3x3 / stride-1 max pool instead;
  * no auxiliary classifier; fc has 1008 outputs.
Parameter names mirror the torch keys (``Mixed_6b.branch7x7_2.conv.weight``), so weights load
by name (``torch_key_shapes`` lists them with their torch shapes).

Weights: ``pt_inception-2015-12-05-6726825d.pth`` from pytorch-fid's GitHub releases, read
without torch by ``jaxdiff.metrics.torch_weights`` (a ``.npz`` with the same keys also works).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.errors import CorruptDataError, MissingInputError
from jaxdiff.metrics.features import FeatureNetwork, sha256_file
from jaxdiff.metrics.torch_weights import load_state_dict

Array = jax.Array

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub convention: the name carries the hash prefix
WEIGHTS_ENV = "JAXDIFF_INCEPTION_WEIGHTS"
NETWORK_NAME = "pt_inception-2015-12-05"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3


# ------------------------------------------------------------------------------------------------
# preprocessing
# ------------------------------------------------------------------------------------------------

def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """float64 (out_size, in_size) matrix of PyTorch's bilinear, align_corners=False resize.

    Row j has weight 1 - f on floor(s) and f on min(floor(s) + 1, in_size - 1), where
    s = max((j + 0.5) * in_size / out_size - 0.5, 0) and f = s - floor(s).  No antialiasing
    (downsampling samples two taps), exactly as ``F.interpolate(mode='bilinear')``.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    m = np.zeros((out_size, in_size))
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def resize_bilinear(x: Array, size: int) -> Array:
    """(B, H, W, C) -> (B, size, size, C) float32 by ``bilinear_resize_matrix`` on each axis."""
    mh = jnp.asarray(bilinear_resize_matrix(x.shape[1], size), jnp.float32)
    mw = jnp.asarray(bilinear_resize_matrix(x.shape[2], size), jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)


def preprocess(images: Array, quantize: bool = True) -> Array:
    """Images (B, H, W, 1 or 3) float in [-1, 1] -> network input (B, 299, 299, 3) in [-1, 1].

    Steps 1-3 of the module docstring; ``quantize=False`` skips the uint8 rounding.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images: expected (B, H, W, 1 or 3), got shape {images.shape}")
    x = images.astype(jnp.float32)
    if quantize:
        x = jnp.clip(jnp.round(x * 127.5 + 127.5), 0.0, 255.0) / 255.0
    else:
        x = (x + 1.0) / 2.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return 2.0 * resize_bilinear(x, INPUT_SIZE) - 1.0


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------

def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def max_pool(x: Array, size: int, stride: int, padding: int = 0) -> Array:
    """Max pool over H, W of (B, H, W, C); padding counts as -inf (torch ``MaxPool2d``)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                                 (1, stride, stride, 1), pad)


def avg_pool_3x3_exclude_pad(x: Array) -> Array:
    """3x3, stride-1, padding-1 average pool of (B, H, W, C) dividing by the number of in-image
    pixels of each window (torch ``avg_pool2d(..., count_include_pad=False)``)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
    return total / count


class BasicConv2d(nnx.Module):
    """Bias-free convolution -> BatchNorm (eps 1e-3, running statistics) -> ReLU; NHWC."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0, *,
                 rngs: nnx.Rngs):
        ph, pw = _pair(padding)
        self.conv = nnx.Conv(cin, cout, _pair(kernel), strides=stride,
                             padding=((ph, ph), (pw, pw)), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=BN_EPS, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
    """Mixed_5b-d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(excl. pad)-1x1 -> 224 + pool_features."""

    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a (grid reduction 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2 -> 480 + cin."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b-e: factorised 7x7 branches (1x7 / 7x1) and avgpool(excl. pad) -> 768."""

    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([self.branch1x1(x), b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a (grid reduction 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool -> 512 + cin."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                      self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b / 7c: expanded 1x3 + 3x1 branches -> 2048.  ``pool``: 'avg' (avg pool excluding
    padding, Mixed_7b) or 'max' (3x3 stride-1 max pool, Mixed_7c), as in pytorch-fid."""

    def __init__(self, cin: int, pool: str, *, rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"pool: expected 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = avg_pool_3x3_exclude_pad(x) if self.pool == "avg" else max_pool(x, 3, 1, 1)
        return jnp.concatenate([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
    """FID Inception-v3: (B, 299, 299, 3) in [-1, 1] -> (pool3 (B, 2048), logits (B, 1008)).

    Spatial sizes: 299 -> 149 -> 147 -> 147 -> pool 73 -> 73 -> 71 -> pool 35 (Mixed_5*)
    -> 17 (Mixed_6*) -> 8 (Mixed_7*) -> global average pool.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)
        self.fc = nnx.Linear(FEATURE_DIM, NUM_LOGITS, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = max_pool(x, 3, 2)
        x = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        pool3 = x.mean(axis=(1, 2))
        return pool3, self.fc(pool3)


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}
# torch layout from ours: conv (kh, kw, in, out) -> (out, in, kh, kw); linear (in, out) -> (out, in)
_TO_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}
IGNORED_TORCH_SUFFIXES = (".num_batches_tracked",)  # BatchNorm's step counter, unused


def abstract_inception() -> InceptionV3:
    """The network with ``jax.ShapeDtypeStruct`` leaves (no initialisation compute)."""
    return nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))


def _flat_params(net: InceptionV3) -> dict[tuple[str, ...], object]:
    """``{path tuple: leaf}`` of the network's state (arrays or ShapeDtypeStructs)."""
    out = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, prefix + (str(k),))
            else:
                out[prefix + (str(k),)] = v

    walk(nnx.to_pure_dict(nnx.state(net)), ())
    return out


def _torch_key(path: tuple[str, ...]) -> str:
    return ".".join(path[:-1] + (_LEAF_TO_TORCH[path[-1]],))


def _torch_shape(path: tuple[str, ...], shape) -> tuple[int, ...]:
    if path[-1] == "kernel":
        return tuple(int(shape[a]) for a in _TO_TORCH_AXES[len(shape)])
    return tuple(int(d) for d in shape)


@functools.lru_cache(maxsize=1)
def _torch_layout() -> tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...]:
    """(torch key, our state path, torch shape) of every weight, from the abstract network."""
    return tuple((_torch_key(p), p, _torch_shape(p, v.shape))
                 for p, v in _flat_params(abstract_inception()).items())


def torch_key_shapes() -> dict[str, tuple[int, ...]]:
    """``{torch state_dict key: torch shape}`` of every weight the network needs (472 keys)."""
    return {key: shape for key, _, shape in _torch_layout()}


def _check_state_dict(state_dict: dict[str, np.ndarray]) -> None:
    wanted = torch_key_shapes()
    given = {k for k in state_dict if not k.endswith(IGNORED_TORCH_SUFFIXES)}
    missing, unexpected = sorted(set(wanted) - given), sorted(given - set(wanted))
    if missing or unexpected:
        raise ValueError(f"Inception weights do not match the FID Inception network: "
                         f"missing {missing[:10]}{'...' if len(missing) > 10 else ''} "
                         f"({len(missing)}), unexpected {unexpected[:10]}"
                         f"{'...' if len(unexpected) > 10 else ''} ({len(unexpected)})")
    for key, shape in wanted.items():
        if np.shape(state_dict[key]) != shape:
            raise ValueError(f"Inception weight {key}: expected shape {shape}, got "
                             f"{np.shape(state_dict[key])}")


def inception_from_torch(state_dict: dict[str, np.ndarray]) -> InceptionV3:
    """The network with a pytorch-fid state dict's weights, transposed to NHWC layouts.

    Raises:
      ValueError: keys missing from or unexpected in ``state_dict`` (``num_batches_tracked``
        entries are ignored), or a shape that differs from the torch shape; all are named.
    """
    _check_state_dict(state_dict)
    pure: dict = {}
    for key, path, _ in _torch_layout():
        value = np.asarray(state_dict[key], np.float32)
        if path[-1] == "kernel":
            value = np.transpose(value, np.argsort(_TO_TORCH_AXES[value.ndim]))
        node = pure
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(value)
    graphdef, state = nnx.split(abstract_inception())
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def weights_instructions(problem: str) -> str:
    return (f"{problem}. The FID Inception weights are the file {WEIGHTS_FILE}, which "
            f"pytorch-fid (mseitzer/pytorch-fid) publishes among its GitHub release assets "
            f"(release 'fid_weights'). Download it once, put it anywhere readable (e.g. "
            f"~/.cache/jaxdiff/{WEIGHTS_FILE}), and either pass its path (the evaluation "
            f"config's Inception weights field / load_inception(path)) or set the environment "
            f"variable {WEIGHTS_ENV}=/path/to/{WEIGHTS_FILE}. An .npz with the same keys also "
            f"works (see jaxdiff.metrics.torch_weights).")


def resolve_weights_path(path: str | os.PathLike | None = None) -> str:
    """``path`` if given, else ``$JAXDIFF_INCEPTION_WEIGHTS``; MissingInputError with download
    and placement instructions when neither names an existing file."""
    if path is None or os.fspath(path) == "":
        path = os.environ.get(WEIGHTS_ENV, "")
        if not path:
            raise MissingInputError(weights_instructions(
                f"No Inception weights path given and {WEIGHTS_ENV} is not set"))
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(weights_instructions(f"Inception weights file {path!r} does not "
                                                     f"exist"))
    return path


def check_weights(path: str | os.PathLike | None = None,
                  require_standard: bool = True) -> tuple[str, str]:
    """(path, SHA-256) of the Inception weights file, checked without loading it: it exists
    and, with ``require_standard``, a ``.pth`` is the published file.

    Raises:
      MissingInputError: no weights file (the message says where to get it).
      CorruptDataError: another file than the published one under ``require_standard``.
    """
    path = resolve_weights_path(path)
    checksum = sha256_file(path)
    if require_standard and not path.endswith(".npz") and not checksum.startswith(
            WEIGHTS_SHA256_PREFIX):
        raise CorruptDataError(
            f"Inception weights {path}: SHA-256 {checksum[:16]}... is not that of "
            f"{WEIGHTS_FILE} ({WEIGHTS_SHA256_PREFIX}...); FIDs from other weights are not "
            f"comparable. Point {WEIGHTS_ENV} or config.eval.inception_weights at the published "
            f"file, or set config.eval.require_standard_inception=False to use it anyway")
    return path, checksum


def _forward(graphdef, state, images, quantize: bool):
    return nnx.merge(graphdef, state)(preprocess(images, quantize))


def load_inception(path: str | os.PathLike | None = None, *, batch_size: int = 50,
                   quantize: bool = True, require_standard: bool = True) -> FeatureNetwork:
    """The FID Inception network with weights from ``path`` (or ``$JAXDIFF_INCEPTION_WEIGHTS``).

    Args:
      path: a ``.pth`` (torch zip or legacy format) or ``.npz`` state dict.
      batch_size: images per compiled call.
      quantize: round inputs to uint8 first (protocol step 1); keep True for comparable FIDs.
      require_standard: for a ``.pth``, require its SHA-256 to start with ``6726825d`` (the
        published file); set False for other weights (e.g. tests).
    Returns:
      A ``FeatureNetwork`` (name 'pt_inception-2015-12-05', checksum = SHA-256 of the file)
      mapping (N, H, W, 1 or 3) images in [-1, 1] to pool3 features (N, 2048) and logits
      (N, 1008).
    Raises:
      MissingInputError: no weights file (message says where to get it and where to put it).
      CorruptDataError: the file is not the published one (``require_standard``).
      ValueError: its keys / shapes do not match.
    """
    path, checksum = check_weights(path, require_standard)
    graphdef, state = nnx.split(inception_from_torch(load_state_dict(path)))
    apply = jax.jit(functools.partial(_forward, graphdef, quantize=quantize))
    return FeatureNetwork(name=NETWORK_NAME, checksum=checksum, feature_dim=FEATURE_DIM,
                          num_classes=NUM_LOGITS, apply=functools.partial(apply, state),
                          batch_size=batch_size)
