"""Data loading: the shared CIFAR-10 archive, the cache, image folders and archives, bad inputs."""

import io
import pickle
import tarfile
import time
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from fedkt import data as fd
from fedkt.data import (CIFAR10_CLASSES, DataError, ImageData, load_cifar10, load_dataset, load_image_folder,
                        make_synthetic, normalize, write_image_folder)
from fedkt.files import write_atomic


def grouped_by_class(x, y):
    """x, y reordered as an image-folder loader returns them: by class, then by file index."""
    order = torch.argsort(y, stable=True)
    return x[order], y[order]


def write_png(path, size=(32, 32), mode="RGB", color=(200, 100, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode != "L" else 128).save(path)


def tiny_folder(root, classes=("a", "b"), size=(32, 32), per_class=2):
    for split in ("train", "test"):
        for c in classes:
            for i in range(per_class):
                write_png(root / split / c / f"{i}.png", size=size)
    return root


# ----------------------------------------------------------------------------- the shared archive

def test_cifar_archive_contents(cifar_data):
    d = cifar_data
    assert d.x_train.shape == (50000, 3, 32, 32) and d.x_test.shape == (10000, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert d.classes == CIFAR10_CLASSES
    assert d.classes[0] == "airplane" and d.classes[-1] == "truck"
    assert d.y_train.bincount().tolist() == [5000] * 10
    assert d.y_test.bincount().tolist() == [1000] * 10
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 3, 32)
    np.testing.assert_allclose(d.mean, (0.491, 0.482, 0.447), atol=0.002)
    np.testing.assert_allclose(d.std, (0.245, 0.243, 0.261), atol=0.003)
    # the stats agree with the pixels
    x = d.x_train[::10].float() / 255  # files are grouped by class: take every class
    assert abs(x[:, 0].mean().item() - d.mean[0]) < 0.01
    # images are real, different pictures (not a constant fill)
    assert d.x_train.float().std() > 40 and not torch.equal(d.x_train[0], d.x_train[1])


def test_cached_load_is_fast_and_equal(cifar_archive, cifar_data, session_cache):
    start = time.perf_counter()
    again = load_cifar10(cifar_archive)  # FEDKT_CACHE points at the session cache
    elapsed = time.perf_counter() - start
    assert torch.equal(again.x_train, cifar_data.x_train) and torch.equal(again.y_train, cifar_data.y_train)
    assert torch.equal(again.x_test, cifar_data.x_test) and torch.equal(again.y_test, cifar_data.y_test)
    assert again.classes == cifar_data.classes and again.mean == cifar_data.mean and again.std == cifar_data.std
    assert list(session_cache.glob("cifar10-*/x_train.npy")), "the decoded arrays were not cached"
    assert elapsed < 5.0, f"cached load took {elapsed:.1f} s"


def test_truncated_archive(cifar_archive, tmp_path):
    half = tmp_path / "half.tar.gz"
    blob = cifar_archive.read_bytes()
    half.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(DataError, match="truncated") as err:
        load_cifar10(half)
    assert str(half) in str(err.value)


# ----------------------------------------------------------------------------- round trips and options

def test_image_folder_round_trip(tiny_data, tmp_path):
    root = write_image_folder(tiny_data, tmp_path / "tiny")
    loaded = load_image_folder(root, resize="none")
    x, y = grouped_by_class(tiny_data.x_train, tiny_data.y_train)
    assert torch.equal(loaded.x_train, x) and torch.equal(loaded.y_train, y)
    x, y = grouped_by_class(tiny_data.x_test, tiny_data.y_test)
    assert torch.equal(loaded.x_test, x) and torch.equal(loaded.y_test, y)
    assert loaded.classes == tiny_data.classes
    np.testing.assert_allclose(loaded.mean, tiny_data.mean, atol=1e-9)
    # the folder's parent (one top folder) is found as well
    assert torch.equal(load_image_folder(tmp_path, resize="none").x_train, loaded.x_train)


def test_tar_round_trip(tiny_data, tmp_path):
    folder = load_image_folder(write_image_folder(tiny_data, tmp_path / "tiny"), resize="none")
    archive = write_image_folder(tiny_data, tmp_path / "tiny.tar.gz")
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0].startswith("tiny/train/")
    from_tar = load_image_folder(archive, resize="none")
    assert torch.equal(from_tar.x_train, folder.x_train) and torch.equal(from_tar.y_test, folder.y_test)
    # an archive without a top folder
    flat = tmp_path / "flat.tgz"
    with tarfile.open(flat, "w:gz") as tar:
        tar.add(tmp_path / "tiny" / "train", arcname="train")
        tar.add(tmp_path / "tiny" / "test", arcname="test")
    assert torch.equal(load_image_folder(flat, resize="none").x_train, folder.x_train)


def test_corrupt_cache_is_rebuilt(tiny_data, tmp_path):
    archive = write_image_folder(tiny_data, tmp_path / "tiny.tar.gz")
    cache = tmp_path / "cache"
    first = load_image_folder(archive, resize="none", cache_dir=cache)
    (npy,) = cache.glob("imagefolder-*/x_train.npy")
    npy.write_bytes(npy.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="rebuilding"):
        second = load_image_folder(archive, resize="none", cache_dir=cache)
    assert torch.equal(first.x_train, second.x_train)
    third = load_image_folder(archive, resize="none", cache_dir=cache)  # repaired: loads quietly
    assert torch.equal(first.x_train, third.x_train)


def test_cache_key_follows_the_options(tiny_data, tmp_path):
    root = write_image_folder(tiny_data, tmp_path / "tiny")
    assert load_image_folder(root, image_size=16).image_size == 16
    assert load_image_folder(root, image_size=32).image_size == 32


def test_resize_and_pad(tmp_path):
    root = tmp_path / "mixed"
    write_png(root / "train" / "a" / "big.png", size=(40, 48), color=(255, 255, 255))
    write_png(root / "train" / "b" / "small.png", size=(20, 28), color=(255, 255, 255))
    write_png(root / "test" / "a" / "x.png", size=(33, 31))
    write_png(root / "test" / "b" / "y.png", size=(32, 32))
    resized = load_image_folder(root, image_size=32, resize="resize")
    assert resized.x_train.shape == (2, 3, 32, 32) and resized.x_test.shape == (2, 3, 32, 32)
    assert (resized.x_train == 255).all()
    padded = load_image_folder(root, image_size=24, resize="pad")
    assert padded.x_train.shape == (2, 3, 24, 24) and padded.x_test.shape == (2, 3, 24, 24)
    big, small = padded.x_train
    assert (big == 255).all()  # 40x48 center-cropped to 24x24
    assert (small[:, :, 2:22] == 255).all() and (small[:, :, :2] == 0).all() and (small[:, :, 22:] == 0).all()
    assert padded.image_size == 24


def test_mixed_sizes_with_resize_none(tmp_path):
    root = tiny_folder(tmp_path / "mixed")
    write_png(root / "train" / "b" / "odd.png", size=(30, 32))
    with pytest.raises(DataError, match="data.resize=resize") as err:
        load_image_folder(root, resize="none")
    assert "odd.png" in str(err.value) and str(root) in str(err.value)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    root = tmp_path / "modes"
    write_png(root / "train" / "a" / "gray.png", mode="L")
    write_png(root / "train" / "b" / "rgba.png", mode="RGBA", color=(10, 20, 30, 40))
    write_png(root / "test" / "a" / "p.png", mode="RGB")
    write_png(root / "test" / "b" / "q.png", mode="RGB")
    d = load_image_folder(root, resize="none")
    assert d.x_train.shape == (2, 3, 32, 32) and d.in_channels == 3
    assert (d.x_train[0] == 128).all() and d.x_train[1, :, 0, 0].tolist() == [10, 20, 30]


def test_torchvision_pickles(tiny_data, tmp_path):
    """Layout (c): torchvision's cifar-10-batches-py folder, its parent, and cifar-10-python.tar.gz."""
    source = make_synthetic(num_train=500, num_test=100, seed=3)
    folder = write_cifar_pickles(source, tmp_path)
    direct = load_cifar10(folder)
    parent = load_cifar10(tmp_path)
    assert direct.x_train.shape == (500, 3, 32, 32) and direct.classes == CIFAR10_CLASSES
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(direct, name), getattr(source, name)), name
    assert torch.equal(direct.x_train, parent.x_train) and torch.equal(direct.y_test, parent.y_test)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    assert torch.equal(load_cifar10(archive).x_train, direct.x_train)


def write_cifar_pickles(d, root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x, y = d.x_train.numpy().reshape(len(d.x_train), -1), d.y_train.numpy().tolist()
    for i, part in enumerate(np.array_split(np.arange(len(x)), 5)):
        batch = {"data": x[part], "labels": [y[j] for j in part]}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    test = {"data": d.x_test.numpy().reshape(len(d.x_test), -1), "labels": d.y_test.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR10_CLASSES}))
    return folder


def test_download_path(tmp_path, monkeypatch):
    """download=True calls torchvision's CIFAR10(root, download=True) when nothing is found."""
    import torchvision
    calls = []

    def fake_cifar10(root, train=True, download=False):
        calls.append((root, download))
        write_cifar_pickles(make_synthetic(num_train=50, num_test=10), tmp_path / "dl")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    d = load_cifar10(tmp_path / "dl", download=True)
    assert calls == [(str(tmp_path / "dl"), True)] and len(d.x_train) == 50

    def offline(root, train=True, download=False):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="downloading CIFAR-10 failed") as err:
        load_cifar10(tmp_path / "elsewhere", download=True)
    assert str(tmp_path / "elsewhere") in str(err.value)


def test_synthetic_is_deterministic_and_learnable():
    a, b, c = make_synthetic(seed=1), make_synthetic(seed=1), make_synthetic(seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.shape == (2000, 3, 32, 32) and a.y_train.bincount().tolist() == [200] * 10
    # a nearest-class-mean classifier separates the classes
    xtr, xte = a.x_train.flatten(1).float(), a.x_test.flatten(1).float()
    centroids = torch.stack([xtr[a.y_train == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(xte, centroids).argmin(1) == a.y_test).float().mean()
    assert accuracy > 0.9
    gray = make_synthetic(num_train=20, num_test=10, num_classes=4, image_size=16, channels=1)
    assert gray.x_train.shape == (20, 1, 16, 16) and gray.num_classes == 4


def test_normalize(tiny_data):
    z = normalize(tiny_data.x_train, tiny_data.mean, tiny_data.std)
    assert z.dtype == torch.float32 and z.shape == tiny_data.x_train.shape
    np.testing.assert_allclose(z.mean((0, 2, 3)).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(z.std((0, 2, 3)).numpy(), 1, atol=1e-3)
    one = normalize(tiny_data.x_train[0], tiny_data.mean, tiny_data.std)  # a single C x H x W image
    assert torch.allclose(one, z[0])
    with pytest.raises(ValueError, match="do not match"):
        normalize(tiny_data.x_train, (0.5,), (0.5,))


def test_load_dataset_dispatch(tiny_data, tmp_path):
    assert isinstance(load_dataset("synthetic", root=None), ImageData)
    root = write_image_folder(tiny_data, tmp_path / "tiny")
    assert load_dataset("imagefolder", root, image_size=16).x_train.shape[1:] == (3, 16, 16)
    with pytest.raises(ValueError, match="cifar10, imagefolder, synthetic"):
        load_dataset("mnist", root)


# ----------------------------------------------------------------------------- bad inputs

def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_cifar10(missing)
    message = str(err.value)
    assert str(missing) in message and "data.download=true" in message and "cifar-10-batches-py" in message
    with pytest.raises(DataError, match="nowhere"):
        load_image_folder(missing)


def test_empty_root_setting():
    with pytest.raises(DataError, match="data.root"):
        load_cifar10("")


def test_non_image_named_jpg(tmp_path):
    root = tiny_folder(tmp_path / "bad")
    fake = root / "train" / "a" / "fake.jpg"
    fake.write_text("this is not a picture")
    with pytest.raises(DataError, match="not a readable image") as err:
        load_image_folder(root)
    assert str(fake) in str(err.value)
    # the same inside an archive names the member
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="bad")
    with pytest.raises(DataError, match="bad/train/a/fake.jpg") as err:
        load_image_folder(archive)
    assert str(archive) in str(err.value)


def test_folder_without_classes(tmp_path):
    root = tmp_path / "empty"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    with pytest.raises(DataError, match="no class subfolders") as err:
        load_image_folder(root)
    assert str(root) in str(err.value)
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(DataError, match="train/") as err:
        load_image_folder(nothing)
    assert str(nothing) in str(err.value)


def test_folder_scan_leaves_hidden_folders_and_files_out(tmp_path):
    """Hidden class folders, hidden subfolders inside a class and hidden files are not images of the set (the
    scan before torchvision's find_classes / make_dataset walked hidden subfolders of a class all the same)."""
    root = tiny_folder(tmp_path / "d")
    for extra in ("train/.cache/0.png", "train/a/.thumbs/0.png", "train/a/.0.png", "train/a/sub/9.png"):
        write_png(root / extra)
    d = load_image_folder(root)
    assert d.classes == ["a", "b"]
    assert len(d.x_train) == 5 and d.y_train.tolist() == [0, 0, 0, 1, 1]  # a/0, a/1, a/sub/9; b/0, b/1


def test_cifar_batch_missing_is_named(tiny_data, tmp_path):
    folder = write_cifar_pickles(make_synthetic(num_train=50, num_test=10), tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing from cifar-10-batches-py") as err:
        load_cifar10(folder)
    assert str(folder / "data_batch_3") in str(err.value)


def test_class_folder_without_images(tmp_path):
    root = tiny_folder(tmp_path / "d")
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no images") as err:
        load_image_folder(root)
    assert str(root / "train" / "c") in str(err.value)


def test_missing_split(tmp_path):
    root = tiny_folder(tmp_path / "d")
    for f in (root / "test").rglob("*.png"):
        f.unlink()
    for d in sorted((root / "test").iterdir()):
        d.rmdir()
    (root / "test").rmdir()
    with pytest.raises(DataError, match="no test/ folder") as err:
        load_image_folder(root)
    assert str(root) in str(err.value)


def test_different_class_sets(tmp_path):
    root = tiny_folder(tmp_path / "d")
    write_png(root / "train" / "c" / "0.png")
    with pytest.raises(DataError, match="only in train: \\['c'\\]") as err:
        load_image_folder(root)
    assert str(root) in str(err.value)


def test_not_an_archive(tmp_path):
    junk = tmp_path / "data.tar.gz"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError) as err:
        load_cifar10(junk)
    assert str(junk) in str(err.value)


def test_cifar_loader_rejects_other_classes(tiny_data, tmp_path):
    root = write_image_folder(tiny_data, tmp_path / "tiny")
    with pytest.raises(DataError, match="data.name=imagefolder") as err:
        load_cifar10(root)
    assert str(root) in str(err.value)


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="data.resize"):
        load_image_folder(tmp_path, resize="stretch")


def test_write_atomic_keeps_the_old_file_whole_when_writing_fails(tmp_path):
    """fedkt.files.write_atomic, the one writer of the cache, the run directory, figures and client state."""
    path = tmp_path / "x.npy"
    write_atomic(path, b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
    write_atomic(path, "new text")
    assert path.read_text() == "new text" and sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_cache_write_failure_only_warns(tiny_data, tmp_path):
    root = write_image_folder(tiny_data, tmp_path / "tiny")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should go")
    with pytest.warns(UserWarning, match="could not write the data cache"):
        d = load_image_folder(root, resize="none", cache_dir=blocker)
    assert len(d.x_train) == len(tiny_data.x_train)


def test_internal_decode_names_member():
    with pytest.raises(DataError, match="member.jpg"):
        fd._decode(io.BytesIO(b"junk").getvalue(), "archive.tgz:member.jpg", 32, "resize")
