"""FID Inception port: resize / pooling semantics, torch key shapes, torch-free .pth reading,
loading random weights with the standard key names and running 2 images."""
import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.metrics import inception as I
from jaxdiff.metrics import torch_weights as T


# ------------------------------------------------------------------------------------------------
# preprocessing and layers
# ------------------------------------------------------------------------------------------------

def test_resize_matrix_hand_computed():
    # upsample 2 -> 4: sources max(0.5 (j + 0.5) - 0.5, 0) = 0, 0.25, 0.75, 1.25 (clamped to 1)
    np.testing.assert_allclose(I.bilinear_resize_matrix(2, 4),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    # downsample 4 -> 2: sources 0.5 and 2.5, two taps each, no antialiasing
    np.testing.assert_allclose(I.bilinear_resize_matrix(4, 2),
                               [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(I.bilinear_resize_matrix(5, 5), np.eye(5))
    # 3 -> 2: sources 0.25 and 1.75
    np.testing.assert_allclose(I.bilinear_resize_matrix(3, 2),
                               [[0.75, 0.25, 0], [0, 0.25, 0.75]])


def test_resize_bilinear_2d_example():
    img = np.array([[0.0, 4.0], [8.0, 12.0]], np.float32)[None, :, :, None]
    out = np.asarray(I.resize_bilinear(jnp.asarray(img), 4))[0, :, :, 0]
    w = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(out, w @ img[0, :, :, 0] @ w.T, rtol=1e-6)
    assert out[1, 1] == pytest.approx(0.75 * 0.75 * 0 + 0.75 * 0.25 * 4 + 0.25 * 0.75 * 8
                                      + 0.25 * 0.25 * 12)


def test_preprocess_quantizes_repeats_gray_and_scales():
    x = jnp.full((1, 299, 299, 1), 0.0)
    out = np.asarray(I.preprocess(x))
    assert out.shape == (1, 299, 299, 3)
    # 0.0 -> 127.5 -> round half to even 128 -> 128 / 255 -> 2 * . - 1
    np.testing.assert_allclose(out, 2 * 128 / 255 - 1, atol=1e-6)
    np.testing.assert_allclose(np.asarray(I.preprocess(x, quantize=False)), 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="images"):
        I.preprocess(jnp.zeros((1, 8, 8, 2)))


def test_avg_pool_excludes_padding():
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    out = np.asarray(I.avg_pool_3x3_exclude_pad(x))[0, :, :, 0]
    assert out[0, 0] == pytest.approx((0 + 1 + 3 + 4) / 4)   # corner: 4 pixels, not 9
    assert out[0, 1] == pytest.approx((0 + 1 + 2 + 3 + 4 + 5) / 6)
    assert out[1, 1] == pytest.approx(4.0)
    np.testing.assert_allclose(np.asarray(I.avg_pool_3x3_exclude_pad(jnp.ones((1, 5, 5, 2)))), 1)


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - jnp.arange(16.0).reshape(1, 4, 4, 1)
    out = np.asarray(I.max_pool(x, 3, 1, 1))[0, :, :, 0]
    assert out[0, 0] == -1.0 and out[3, 3] == -(1 + 10)  # zero padding would give 0
    assert I.max_pool(jnp.zeros((1, 35, 35, 1)), 3, 2).shape == (1, 17, 17, 1)


# ------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------

# torch shapes written out from the torchvision / pytorch-fid layer definitions
EXPECTED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.weight": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def key_shapes():
    return I.torch_key_shapes()


def test_torch_key_shapes(key_shapes):
    for key, shape in EXPECTED_SHAPES.items():
        assert key_shapes[key] == shape, key
    # 94 conv + BN layers (5 keys each) and fc (2 keys)
    assert len(key_shapes) == 94 * 5 + 2
    convs = [k for k in key_shapes if k.endswith("conv.weight")]
    assert len(convs) == 94
    for k in convs:
        stem = k[:-len("conv.weight")]
        c_out = key_shapes[k][0]
        for leaf in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            assert key_shapes[stem + leaf] == (c_out,)
    # torchvision's Inception-v3 without the aux head has 23,834,568 trainable parameters
    # with a 1000-way fc; the FID network's 1008-way fc adds 8 * 2048 + 8.
    trainable = sum(int(np.prod(s)) for k, s in key_shapes.items()
                    if not k.endswith(("running_mean", "running_var")))
    assert trainable == 23_834_568 + 8 * 2048 + 8


def _random_state_dict(key_shapes, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for k, s in key_shapes.items():
        if k.endswith("conv.weight"):
            sd[k] = rng.normal(size=s) * np.sqrt(2.0 / np.prod(s[1:]))
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 1.5, s)
        elif k.endswith("bn.weight"):
            sd[k] = rng.uniform(0.8, 1.2, s)
        elif k == "fc.weight":
            sd[k] = rng.normal(size=s) / np.sqrt(s[1])
        else:
            sd[k] = 0.1 * rng.normal(size=s)
        sd[k] = sd[k].astype(np.float32)
    return sd


def test_load_inception_from_npz_runs_two_images(key_shapes, tmp_path, monkeypatch):
    sd = _random_state_dict(key_shapes)
    sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0, np.int64)  # ignored like torch
    path = str(tmp_path / "inception.npz")
    np.savez(path, **sd)
    monkeypatch.setenv(I.WEIGHTS_ENV, path)
    net = I.load_inception(batch_size=2)  # path from the environment variable
    assert net.name == I.NETWORK_NAME and len(net.checksum) == 64
    images = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    feats, logits = net.features_and_logits(images)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert np.all(np.isfinite(feats)) and np.all(np.isfinite(logits))
    assert np.all(feats >= 0)  # pool3 averages ReLU outputs
    assert not np.allclose(feats[0], feats[1])
    # the fc layer is the torch Linear: logits = W f + b
    np.testing.assert_allclose(logits, feats @ sd["fc.weight"].T + sd["fc.bias"], rtol=2e-3,
                               atol=2e-3)


def test_inception_weight_errors(key_shapes, tmp_path, monkeypatch):
    sd = {k: np.zeros(s, np.float32) for k, s in key_shapes.items()}
    del sd["Mixed_6c.branch1x1.conv.weight"]
    sd["Mixed_6c.branch1x1.conv.bias"] = np.zeros(192, np.float32)
    with pytest.raises(ValueError, match=r"missing \['Mixed_6c.branch1x1.conv.weight'\].*"
                                         r"unexpected \['Mixed_6c.branch1x1.conv.bias'\]"):
        I.inception_from_torch(sd)
    sd = {k: np.zeros(s, np.float32) for k, s in key_shapes.items()}
    sd["fc.weight"] = np.zeros((2048, 1008), np.float32)  # not transposed to torch's (out, in)
    with pytest.raises(ValueError, match=r"fc.weight: expected shape \(1008, 2048\)"):
        I.inception_from_torch(sd)

    monkeypatch.delenv(I.WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        I.load_inception()
    msg = str(err.value)
    assert I.WEIGHTS_FILE in msg and "pytorch-fid" in msg and I.WEIGHTS_ENV in msg
    assert "http" not in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        I.load_inception(str(tmp_path / I.WEIGHTS_FILE))

    # a .pth that is not the published file is refused before anything is built
    pth = str(tmp_path / "other.pth")
    _write_zip_pth(pth, {"w": (np.ones(3, np.float32), 0, (3,), (1,))}, monkeypatch)
    with pytest.raises(ValueError, match="not that of " + I.WEIGHTS_FILE):
        I.load_inception(pth)


# ------------------------------------------------------------------------------------------------
# torch-free .pth reading; files written here in torch's two formats without torch
# ------------------------------------------------------------------------------------------------

def _fake_torch(monkeypatch):
    """Registers stand-ins for torch.FloatStorage / LongStorage / _utils._rebuild_tensor_v2 so
    the standard pickler writes the same globals torch.save does."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storages = {}
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {})
        cls.__module__ = "torch"
        setattr(torch, name, cls)
        storages[np.dtype(np.float32 if name == "FloatStorage" else np.int64)] = cls

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return storages, _rebuild_tensor_v2


class _Storage:
    def __init__(self, key, data):
        self.key, self.data = key, data


class _Tensor:
    def __init__(self, rebuild, storage, offset, size, stride):
        self.args = (rebuild, (storage, offset, size, stride, False, collections.OrderedDict()))

    def __reduce__(self):
        return self.args


def _state(tensors, monkeypatch):
    """tensors: name -> (flat storage array, offset, size, stride); equal arrays share storage."""
    storage_types, rebuild = _fake_torch(monkeypatch)
    storages, state = {}, collections.OrderedDict()
    for name, (flat, offset, size, stride) in tensors.items():
        key = storages.setdefault(id(flat), _Storage(str(len(storages)), flat))
        state[name] = _Tensor(rebuild, key, offset, size, stride)
    return state, storage_types, list(storages.values())


def _write_zip_pth(path, tensors, monkeypatch):
    state, types_, storages = _state(tensors, monkeypatch)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", types_[obj.data.dtype], obj.key, "cpu", obj.data.size)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for s in storages:
            zf.writestr(f"archive/data/{s.key}", s.data.astype(s.data.dtype.newbyteorder("<"))
                        .tobytes())
        zf.writestr("archive/version", "3\n")


def _write_legacy_pth(path, tensors, monkeypatch):
    state, types_, storages = _state(tensors, monkeypatch)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", types_[obj.data.dtype], obj.key, "cpu", obj.data.size, None)
            return None

    with open(path, "wb") as f:
        pickle.dump(T.LEGACY_MAGIC, f, protocol=2)
        pickle.dump(T.LEGACY_PROTOCOL, f, protocol=2)
        pickle.dump(dict(protocol_version=1001, little_endian=True), f, protocol=2)
        Pickler(f, protocol=2).dump(state)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.data.size))
            f.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())


@pytest.mark.parametrize("writer", [_write_zip_pth, _write_legacy_pth])
def test_torch_state_dict_reader(writer, tmp_path, monkeypatch):
    shared = np.arange(10, dtype=np.float32) * 0.5
    steps = np.array([7], np.int64)
    tensors = {
        "a": (shared, 0, (2, 3), (3, 1)),   # contiguous
        "b": (shared, 4, (3, 2), (1, 3)),   # strided view at an offset of the same storage
        "n": (steps, 0, (), ()),            # 0-d int64 (like num_batches_tracked)
    }
    path = str(tmp_path / "w.pth")
    writer(path, tensors, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")  # reading needs no torch
    got = T.load_state_dict(path)
    assert list(got) == ["a", "b", "n"]
    np.testing.assert_array_equal(got["a"], shared[:6].reshape(2, 3))
    np.testing.assert_array_equal(got["b"], [[shared[4 + i + 3 * j] for j in range(2)]
                                             for i in range(3)])
    assert got["a"].dtype == np.float32 and got["n"].dtype == np.int64 and got["n"] == 7


def test_torch_reader_refuses_code_and_bad_strides(tmp_path, monkeypatch):
    path = str(tmp_path / "evil.pth")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(os.system, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        T.load_state_dict(path)
    bad = str(tmp_path / "bad.pth")
    _write_zip_pth(bad, {"w": (np.zeros(4, np.float32), 2, (3,), (1,))}, monkeypatch)
    with pytest.raises(ValueError, match="reaches past its storage"):
        T.load_state_dict(bad)
    with pytest.raises(FileNotFoundError):
        T.load_state_dict(str(tmp_path / "none.pth"))
