"""Datasets: the IDX reader, Fashion-MNIST discovery, the placed and procedural variants."""

import gzip
import struct

import numpy as np
import pytest
import torch

from laudnet.data import ClutteredObjects, PlacedFashionMNIST, build_datasets
from laudnet.data import fashion_mnist as data
from laudnet.data.fashion_mnist import find_fashion_mnist, read_idx


def write_idx(path, array, compress=True):
    """An IDX file of unsigned bytes, as the MNIST files are written."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def fake_fashion_mnist(directory, n_train=12, n_test=6, seed=0):
    """Four small IDX files in ``directory``: items are bright rectangles on black."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            top, left = rng.integers(0, 20, 2)
            images[i, top:top + 6 + i % 3, left:left + 5] = 200
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return directory


def test_read_idx_round_trips_gzipped_and_plain_files(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a", array, compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    assert np.array_equal(read_idx(tmp_path / "a"), array)


def test_read_idx_rejects_bad_files_naming_them(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="bad.*not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="short.*shape \\(4, 2\\)"):
        read_idx(tmp_path / "short")
    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read IDX file"):
        read_idx(tmp_path / "x.gz")


def test_fashion_mnist_found_in_torchvision_layout_and_placed(tmp_path):
    fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    assert find_fashion_mnist(tmp_path) == tmp_path / "FashionMNIST" / "raw"
    splits = build_datasets("fashion-mnist", tmp_path)
    assert (len(splits.train), len(splits.test)) == (12, 6)
    assert splits.train[0][0].shape == (1, 28, 28) and splits.info.num_classes == 10
    placed = PlacedFashionMNIST("test", tmp_path, canvas=40, seed=1)
    background = placed.background
    for i in range(len(placed)):
        image, label = placed[i]
        top, left, bottom, right = placed.box(i)
        assert image.shape == (1, 40, 40) and label == i % 10
        item = image[0] != background
        rows, cols = item.any(1).nonzero()[:, 0], item.any(0).nonzero()[:, 0]
        # the box is exactly the extent of the item's pixels
        assert (top, left, bottom, right) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    assert torch.equal(placed[3][0], placed[3][0])  # test positions are fixed


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*--data DIR"):
        build_datasets("fashion-mnist")


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_files():
    images, labels = data.load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10
    images, labels = data.load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    assert abs(images.mean() / 255 - data.FASHION_MNIST_MEAN) < 0.01


def test_cluttered_objects_are_reproducible_balanced_and_boxed():
    a, b = ClutteredObjects(16, size=32, seed=3), ClutteredObjects(16, size=32, seed=3)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(16))
    assert not torch.equal(a[0][0], ClutteredObjects(16, size=32, seed=4)[0][0])
    assert not torch.equal(a[0][0], ClutteredObjects(16, size=32, seed=3, split="test")[0][0])
    assert [a[i][1] for i in range(16)] == [i % 8 for i in range(16)]
    for i in range(16):
        top, left, bottom, right = a.box(i)
        assert 0 <= top < bottom <= 32 and 0 <= left < right <= 32
        image = a[i][0][0]
        # the object is brighter than the noise around it on average
        assert image[top:bottom, left:right].mean() > image.mean()


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="imagenet"), "unknown dataset 'imagenet'; allowed: cluttered"),
    (dict(name="cluttered", train_size=0), "train size must be positive"),
    (dict(name="fashion-mnist", image_size=32), "28x28.*fashion-mnist-placed"),
    (dict(name="imagefolder"), "--data DIR"),
])
def test_bad_dataset_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_datasets(**kwargs)


def test_missing_cifar_and_imagefolder_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_datasets("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="train.*ImageNet layout"):
        build_datasets("imagefolder", tmp_path)


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 12), (40 * i, 100, 200)).save(tmp_path / split / name / f"{i}.png")
    splits = build_datasets("imagefolder", tmp_path, image_size=8, test_size=3)
    assert splits.info.classes == ("cat", "dog") and splits.info.in_channels == 3
    assert len(splits.train) == 4 and len(splits.test) == 3
    image, label = splits.test[2]
    assert image.shape == (3, 8, 8) and label == 1
