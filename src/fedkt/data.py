"""Image data sets as uint8 tensors: CIFAR-10 (archive, folder, torchvision pickles or download), any
image-folder data set, and a tiny synthetic set for tests.

Decoding happens once; the decoded arrays are cached as .npy files under `cache_dir` (default
$FEDKT_CACHE or ~/.cache/fedkt), keyed by the source's path, size and mtime, so later loads take a
fraction of a second. Every problem with the input raises DataError, whose message names the path and
the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedkt.config import DATASET_NAMES, RESIZE_MODES
from fedkt.files import write_atomic

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
CACHE_VERSION = 1
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_FILES = CIFAR_BATCHES + ["batches.meta"]
CIFAR_FIX = "re-extract cifar-10-python.tar.gz, or set data.download=true"

CIFAR_LAYOUTS = (
    "accepted layouts for data.root: "
    "(a) a .tar.gz of an image folder (train/<class>/*.jpg and test/<class>/*.jpg, optionally under one top folder), "
    "(b) that folder extracted, "
    "(c) torchvision's cifar-10-batches-py folder or its parent, "
    "(d) any folder with data.download=true (torchvision downloads CIFAR-10 there; needs internet)"
)
FOLDER_LAYOUT = ("expected an image-folder layout: train/<class>/<image> and test/<class>/<image> "
                 "(optionally under one top folder), as a folder or a .tar.gz; set data.root to it")


class DataError(ValueError):
    """Bad or missing input data; the message names the path and the fix."""


@dataclass(repr=False)
class ImageData:
    """A train/test image data set: uint8 images N x C x H x W, int64 labels, per-channel stats of the whole
    training split (a federation normalizes with the stats of what its clients may train on instead:
    fedkt.task.normalization_stats)."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        """Image height (images are square unless resize='none' was used on non-square images)."""
        return int(self.x_train.shape[2])

    def __repr__(self) -> str:
        return (f"ImageData(train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"classes={self.num_classes}, mean={tuple(round(m, 4) for m in self.mean)}, "
                f"std={tuple(round(s, 4) for s in self.std)})")


def normalize(x_uint8, mean, std) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, for uint8 images shaped (..., C, H, W); returns float32."""
    x = torch.as_tensor(x_uint8)
    if x.dim() < 3 or x.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(f"normalize: images of shape {tuple(x.shape)} do not match "
                         f"{len(mean)} means and {len(std)} stds (expected (..., C, H, W))")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x.to(torch.float32) / 255.0 - mean_t) / std_t


# -----------------------------------------------------------------------------
# public loaders

def load_dataset(name, root=None, cache_dir=None, download=False, image_size=32, resize="resize") -> ImageData:
    """Load the data set called `name` (cifar10 | imagefolder | synthetic; synthetic ignores root)."""
    key = str(name).lower()
    if key == "cifar10":
        return load_cifar10(root, cache_dir=cache_dir, download=download)
    if key == "imagefolder":
        return load_image_folder(root, image_size=image_size, resize=resize, cache_dir=cache_dir)
    if key == "synthetic":
        return make_synthetic(image_size=image_size)
    raise ValueError(f"data.name={name!r} is unknown; allowed: {', '.join(DATASET_NAMES)}")


def load_cifar10(root, cache_dir=None, download=False) -> ImageData:
    """CIFAR-10 from an image-folder archive or folder, torchvision's pickles, or a torchvision download."""
    root = _check_root(root)
    found = _find_cifar_source(root)
    if found is None and download:
        _download_cifar10(root)
        found = _find_cifar_source(root)
    if found is None:
        problem = "does not exist" if not root.exists() else "holds no CIFAR-10 data"
        raise DataError(f"{root}: {problem}{' after the download' if download else ''}. {CIFAR_LAYOUTS}")
    kind, source = found
    params = {"loader": "cifar10"}
    data = _cache_get(source, params, cache_dir)
    if data is not None:
        return data
    if kind == "pickles" or (kind == "archive" and _is_pickle_archive(source)):
        arrays = _read_cifar_pickles(source)
    else:
        arrays = _read_images(source, image_size=32, resize="none")
        _check_cifar_arrays(source, arrays)
    return _cache_put(source, params, cache_dir, arrays)


def load_image_folder(root, image_size=32, resize="resize", cache_dir=None) -> ImageData:
    """Any image-folder data set (train/<class>/*, test/<class>/*), as a folder or a .tar.gz.

    Classes are sorted by name (as torchvision's ImageFolder does); images are converted to RGB and
    resized to image_size x image_size ("resize"), padded/center-cropped to it ("pad"), or kept as they
    are ("none": all images must then share one size).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"data.resize={resize!r} is unknown; allowed: {', '.join(RESIZE_MODES)}")
    if int(image_size) < 1:
        raise ValueError(f"data.image_size={image_size!r} must be a positive integer")
    root = _check_root(root)
    source = root if root.is_file() else _find_split_folder(root)
    if source is None:
        problem = "does not exist" if not root.exists() else "holds no train/ or test/ folder"
        raise DataError(f"{root}: {problem}. {FOLDER_LAYOUT}")
    params = {"loader": "imagefolder", "image_size": int(image_size), "resize": resize}
    data = _cache_get(source, params, cache_dir)
    if data is not None:
        return data
    arrays = _read_images(source, image_size=int(image_size), resize=resize)
    return _cache_put(source, params, cache_dir, arrays)


def make_synthetic(num_train=2000, num_test=500, num_classes=10, image_size=32, channels=3, seed=0) -> ImageData:
    """Tiny learnable data: each class is a smooth random colour pattern; images add a shift and noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(num_classes, channels, 4, 4))
    reps = -(-image_size // 4)
    templates = np.kron(coarse, np.ones((1, 1, reps, reps)))[:, :, :image_size, :image_size]

    def draw(n):
        y = rng.permutation(np.arange(n) % num_classes)
        shifts = rng.integers(-2, 3, size=(n, 2))
        x = np.stack([np.roll(templates[c], tuple(s), axis=(1, 2)) for c, s in zip(y, shifts)]) \
            if n else np.zeros((0, channels, image_size, image_size))
        x = x + rng.normal(0, 40, size=x.shape)
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    classes = [f"class{c}" for c in range(num_classes)]
    return _to_image_data(dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=classes))


def write_image_folder(data: ImageData, root, fmt="png") -> Path:
    """Write `data` as root/train/<class>/NNNNN.<fmt> and root/test/...; a root ending in .tar.gz or
    .tgz gets a gzipped tar of that layout under one top folder instead. Returns root."""
    root = Path(root)
    archive = root.name.endswith((".tar.gz", ".tgz"))
    top = root.name.removesuffix(".tar.gz").removesuffix(".tgz")
    tar = tarfile.open(root, "w:gz") if archive else None
    try:
        for split, xs, ys in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
            for i, (x, y) in enumerate(zip(xs.numpy(), ys.numpy())):
                img = Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0))
                rel = f"{split}/{data.classes[y]}/{i:05d}.{fmt}"
                if archive:
                    buf = io.BytesIO()
                    img.save(buf, format=Image.registered_extensions()[f".{fmt}"])
                    info = tarfile.TarInfo(f"{top}/{rel}")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
                else:
                    path = root / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    img.save(path)
    finally:
        if tar is not None:
            tar.close()
    return root


# -----------------------------------------------------------------------------
# finding the data

def _check_root(root) -> Path:
    if root is None or str(root) == "":
        raise DataError("data.root is not set: set data.root to the data set's archive or folder")
    return Path(root).expanduser()


def _find_cifar_source(root: Path):
    """(kind, path) of the CIFAR-10 data under root, kind in {'archive', 'folder', 'pickles'}; None if none."""
    if not root.exists():
        return None
    if root.is_file():
        return "archive", root
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file():
            return "pickles", folder
    split_folder = _find_split_folder(root)
    if split_folder is not None:
        return "folder", split_folder
    for name in ("cifar10-jpeg.tar.gz", "cifar10.tar.gz"):
        if (root / name).is_file():
            return "archive", root / name
    return None


def _find_split_folder(root: Path):
    """root itself, or its only subfolder, when it holds train/ or test/; None if neither does."""
    if not root.is_dir():
        return None
    if (root / "train").is_dir() or (root / "test").is_dir():
        return root
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and ((subdirs[0] / "train").is_dir() or (subdirs[0] / "test").is_dir()):
        return subdirs[0]
    return None


def _download_cifar10(root: Path):
    import torchvision
    if root.is_file():
        raise DataError(f"{root}: is a file, not a folder to download CIFAR-10 into; set data.root to a folder")
    try:
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"{root}: downloading CIFAR-10 failed ({type(e).__name__}: {e}). Without internet, "
                        f"copy the data there and set data.root to it; {CIFAR_LAYOUTS}") from e


# -----------------------------------------------------------------------------
# reading the data

def _is_pickle_archive(path: Path) -> bool:
    """True for torchvision's cifar-10-python.tar.gz (its first member is cifar-10-batches-py)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
        return first is not None and first.name.strip("./").startswith("cifar-10-batches-py")
    except (tarfile.TarError, EOFError, zlib.error, OSError):
        return False  # _scan_archive reports the damage


def _read_cifar_pickles(source: Path) -> dict:
    """CIFAR-10 from torchvision's cifar-10-batches-py folder, or from its cifar-10-python.tar.gz (whose
    batches are unpacked into a temporary folder first), read by torchvision's CIFAR10."""
    if source.is_dir():
        return _read_cifar_pickle_folder(source, source)
    with tempfile.TemporaryDirectory(prefix="fedkt-cifar-") as tmp:
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar:
                    if member.isfile() and Path(member.name).name in CIFAR_FILES:
                        (Path(tmp) / Path(member.name).name).write_bytes(tar.extractfile(member).read())
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"{source}: corrupt or truncated archive ({type(e).__name__}: {e}); {CIFAR_FIX}") from e
        return _read_cifar_pickle_folder(Path(tmp), source)


def _read_cifar_pickle_folder(folder: Path, source: Path) -> dict:
    """The batches in `folder` (named after `source` in errors) as arrays; classes from batches.meta."""
    from torchvision.datasets.cifar import CIFAR10  # here, not at the top: importing torchvision takes seconds

    class Batches(CIFAR10):  # the files right in `folder`, whatever its name; no md5 check (the shapes are checked)
        base_folder = ""
        train_list = [[name, None] for name in CIFAR_BATCHES[:5]]
        test_list = [[CIFAR_BATCHES[5], None]]
        meta = {"filename": "batches.meta", "key": "label_names", "md5": None}

    for name in CIFAR_FILES:
        if not (folder / name).is_file():
            where = source / name if source.is_dir() else f"{source}:{name}"
            raise DataError(f"{where}: missing from cifar-10-batches-py; {CIFAR_FIX}")
    try:
        splits = {split: Batches(str(folder), train=split == "train") for split in ("train", "test")}
    except Exception as e:  # unpickling errors come in many types
        raise DataError(f"{source}: unreadable CIFAR-10 batches ({type(e).__name__}: {e}); {CIFAR_FIX}") from e
    arrays = {"classes": list(splits["train"].classes)}
    for split, batches in splits.items():
        arrays[f"x_{split}"] = np.ascontiguousarray(np.asarray(batches.data, dtype=np.uint8).transpose(0, 3, 1, 2))
        arrays[f"y_{split}"] = np.asarray(batches.targets, dtype=np.int64)
    _check_cifar_arrays(source, arrays)
    return arrays


def _check_cifar_arrays(source: Path, arrays: dict):
    if arrays["classes"] != CIFAR10_CLASSES:
        raise DataError(f"{source}: classes {arrays['classes']} are not CIFAR-10's {CIFAR10_CLASSES}; "
                        f"for another data set set data.name=imagefolder")
    shape = arrays["x_train"].shape[1:]
    if shape != (3, 32, 32):
        raise DataError(f"{source}: images are {shape[1]}x{shape[2]}, CIFAR-10's are 32x32; "
                        f"for another data set set data.name=imagefolder")


def _read_images(source: Path, image_size: int, resize: str) -> dict:
    """Decode an image-folder data set (folder or tar archive) into arrays; see load_image_folder."""
    if source.is_file():
        found = _scan_archive(source, image_size, resize)
    else:
        found = {split: _scan_split_folder(source / split, image_size, resize)
                 for split in ("train", "test") if (source / split).is_dir()}
    for split in ("train", "test"):
        if split not in found:
            raise DataError(f"{source}: no {split}/ folder found. {FOLDER_LAYOUT}")
        if not found[split]:
            raise DataError(f"{source}: {split}/ holds no class subfolders with images. {FOLDER_LAYOUT}")
    classes = sorted(found["train"])
    if classes != sorted(found["test"]):
        only_train = sorted(set(found["train"]) - set(found["test"]))
        only_test = sorted(set(found["test"]) - set(found["train"]))
        raise DataError(f"{source}: train/ and test/ hold different classes (only in train: {only_train}, "
                        f"only in test: {only_test}); give both splits the same class folders")
    arrays = {"classes": classes}
    expected = None
    for split in ("train", "test"):
        images, labels = [], []
        for label, name in enumerate(classes):
            for member, img in sorted(found[split][name], key=lambda t: t[0]):
                if expected is None:
                    expected = img.shape
                elif img.shape != expected:
                    raise DataError(f"{source}: image {member} is {img.shape[1]}x{img.shape[0]}, others are "
                                    f"{expected[1]}x{expected[0]}; set data.resize=resize (or pad) to bring "
                                    f"all images to data.image_size")
                images.append(img)
                labels.append(label)
        arrays[f"x_{split}"] = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
        arrays[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
    return arrays


def _scan_split_folder(folder: Path, image_size: int, resize: str) -> dict:
    """{class: [(relative name, HxWx3 array)]} for folder/<class>/**/<image>, found as torchvision's ImageFolder
    finds them (find_classes, make_dataset), hidden folders and files left out."""
    from torchvision.datasets.folder import find_classes, make_dataset  # here: importing torchvision takes seconds

    def visible_image(path: str) -> bool:
        parts = Path(path).relative_to(folder).parts
        return path.lower().endswith(IMAGE_EXTENSIONS) and not any(p.startswith(".") for p in parts)

    try:
        classes = [name for name in find_classes(folder)[0] if not name.startswith(".")]
    except FileNotFoundError:  # no class folder at all: the caller names the fix
        return {}
    found = {name: [] for name in classes}
    for path, label in make_dataset(folder, {name: k for k, name in enumerate(classes)},
                                    is_valid_file=visible_image, allow_empty=True):
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e}); fix its permissions or remove it") from e
        found[classes[label]].append((str(Path(path).relative_to(folder)), _decode(data, path, image_size, resize)))
    for name, items in found.items():
        if not items:
            raise DataError(f"{folder / name}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            f"add images or remove the folder")
    return found


def _scan_archive(path: Path, image_size: int, resize: str) -> dict:
    """{split: {class: [(member name, HxWx3 array)]}}, streamed from a tar archive."""
    found, prefixes = {}, set()
    if not tarfile.is_tarfile(path):
        raise DataError(f"{path}: is a file but not a .tar/.tar.gz archive (or a damaged one); "
                        f"set data.root to the data set's .tar.gz or folder. {FOLDER_LAYOUT}")
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = member.name.strip("/").split("/")
                if parts and parts[0] == ".":
                    parts = parts[1:]
                if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                    continue
                split_at = next((i for i, p in enumerate(parts) if p in ("train", "test")), None)
                if split_at is None:
                    continue
                split = parts[split_at]
                prefixes.add("/".join(parts[:split_at]))
                found.setdefault(split, {})
                if not member.isfile() or len(parts) < split_at + 3:
                    continue
                if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
                    continue
                data = tar.extractfile(member).read()
                img = _decode(data, f"{path}:{member.name}", image_size, resize)
                found[split].setdefault(parts[split_at + 1], []).append((member.name, img))
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupt or truncated archive ({type(e).__name__}: {e}); copy it again "
                        f"(or extract it and set data.root to the folder)") from e
    if len(prefixes) > 1:
        raise DataError(f"{path}: archive holds several train/test trees ({sorted(prefixes)}); "
                        f"keep one data set per archive")
    if not found:
        raise DataError(f"{path}: no train/ or test/ folder inside the archive. {FOLDER_LAYOUT}")
    return found


def _decode(data: bytes, name, image_size: int, resize: str) -> np.ndarray:
    """Decode image bytes to an RGB HxWx3 uint8 array, resized or padded as asked."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {e}); remove or replace the file") from e
    if resize == "resize" and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    elif resize == "pad" and img.size != (image_size, image_size):
        canvas = Image.new("RGB", (image_size, image_size))
        canvas.paste(img, ((image_size - img.width) // 2, (image_size - img.height) // 2))
        img = canvas
    return np.asarray(img, dtype=np.uint8)


# -----------------------------------------------------------------------------
# arrays -> ImageData, and the cache

def channel_stats(x: np.ndarray):
    """Exact per-channel mean and std in [0, 1] units of uint8 images N x C x H x W (via histograms)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        n = max(counts.sum(), 1.0)
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / n
        means.append(float(mean))
        stds.append(float(max(np.sqrt(var), 1e-8)))
    return tuple(means), tuple(stds)


def _to_image_data(arrays: dict, mean=None, std=None) -> ImageData:
    if mean is None:
        mean, std = channel_stats(arrays["x_train"])
    return ImageData(x_train=torch.from_numpy(arrays["x_train"]), y_train=torch.from_numpy(arrays["y_train"]),
                     x_test=torch.from_numpy(arrays["x_test"]), y_test=torch.from_numpy(arrays["y_test"]),
                     classes=list(arrays["classes"]), mean=tuple(mean), std=tuple(std))


def cache_root(cache_dir) -> Path:
    """Where fedkt caches what it computed once: `cache_dir`, else $FEDKT_CACHE, else ~/.cache/fedkt."""
    if cache_dir is None or str(cache_dir) == "":
        cache_dir = os.environ.get("FEDKT_CACHE") or Path.home() / ".cache" / "fedkt"
    return Path(cache_dir).expanduser()


def _fingerprint(source: Path) -> dict:
    """Resolved path, size and mtime of a file, or of all files under a folder (their count, total, newest)."""
    source = source.resolve()
    if source.is_file():
        st = source.stat()
        return {"path": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    count = size = newest = 0
    for dirpath, _, filenames in os.walk(source, followlinks=True):
        for fname in filenames:
            st = os.stat(os.path.join(dirpath, fname))
            count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return {"path": str(source), "files": count, "size": size, "mtime_ns": newest}


def _cache_entry(source: Path, params: dict, cache_dir):
    key = {"version": CACHE_VERSION, **_fingerprint(source), **params}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / f"{params['loader']}-{digest}", key


def _cache_get(source: Path, params: dict, cache_dir):
    """The cached ImageData for this source, or None when absent or unreadable (then it is rebuilt)."""
    entry, key = _cache_entry(source, params, cache_dir)
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        assert meta["key"] == key, "key mismatch"
        arrays = {name: np.load(entry / f"{name}.npy", allow_pickle=False)
                  for name in ("x_train", "y_train", "x_test", "y_test")}
        for name, arr in arrays.items():
            assert list(arr.shape) == meta["shapes"][name], f"{name} has the wrong shape"
        assert arrays["x_train"].dtype == np.uint8 and arrays["y_train"].dtype == np.int64
        arrays["classes"] = meta["classes"]
        return _to_image_data(arrays, meta["mean"], meta["std"])
    except Exception as e:  # any damage to the cache means: decode again
        warnings.warn(f"fedkt: cache entry {entry} is unreadable ({type(e).__name__}: {e}); rebuilding it")
        return None


def _cache_put(source: Path, params: dict, cache_dir, arrays: dict) -> ImageData:
    """Make ImageData from decoded arrays and store them in the cache (atomic writes; failures only warn)."""
    data = _to_image_data(arrays)
    entry, key = _cache_entry(source, params, cache_dir)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for name in ("x_train", "y_train", "x_test", "y_test"):
            write_atomic(entry / f"{name}.npy", lambda f, a=arrays[name]: np.save(f, a))
        meta = {"key": key, "source": str(source.resolve()), "classes": data.classes,
                "mean": data.mean, "std": data.std,
                "shapes": {n: list(arrays[n].shape) for n in ("x_train", "y_train", "x_test", "y_test")}}
        write_atomic(entry / "meta.json", json.dumps(meta, indent=1))
    except OSError as e:
        warnings.warn(f"fedkt: could not write the data cache {entry} ({e}); set data.cache_dir or "
                      f"FEDKT_CACHE to a writable folder to avoid decoding again next time")
    return data
