"""Shared fixtures.

- every test runs with FEDKT_CACHE pointing at one temporary folder for the whole session, so the real
  CIFAR-10 archive is decoded at most once per session and nothing is written to ~/.cache;
- `tiny_data`: a small synthetic, learnable CIFAR-shaped data set;
- `cifar_archive`: the shared CIFAR-10 archive (env FEDKT_CIFAR, else ../shared/data/ beside the checkout);
- `cifar_data`: that archive loaded (session-scoped, through the session cache).
"""

import os
from pathlib import Path

import pytest

from fedkt.data import load_cifar10, make_synthetic

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """One data cache folder for the whole test session."""
    return tmp_path_factory.mktemp("fedkt-cache")


@pytest.fixture(autouse=True)
def _fedkt_cache_env(session_cache, monkeypatch):
    monkeypatch.setenv("FEDKT_CACHE", str(session_cache))


@pytest.fixture(scope="session")
def tiny_data():
    return make_synthetic(num_train=400, num_test=100, num_classes=10, image_size=32, seed=0)


@pytest.fixture(scope="session")
def cifar_archive():
    path = Path(os.environ.get("FEDKT_CIFAR") or REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
    if not path.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {path}: set FEDKT_CIFAR to the path of "
                    f"cifar10-jpeg.tar.gz (see shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def cifar_data(cifar_archive, session_cache):
    return load_cifar10(cifar_archive, cache_dir=session_cache)
