"""The package as it ships: a wheel that carries the Hydra configs (conf/ stays at the top level of the
repository, mapped onto fedkt/conf by pyproject's [tool.setuptools]), found by fedkt.config.CONF_DIR both in
a checkout and in an installed wheel; and modules that import only downwards (no cycle, no project import
hidden inside a function)."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fedkt import config

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for p in (REPO / "src" / "fedkt").rglob("*.py") if "__pycache__" not in p.parts)
CONFIGS = sorted((REPO / "conf").rglob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the files the build reads (the checkout gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"
    for name in ("pyproject.toml", "README.md"):
        tree.mkdir(exist_ok=True)
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "conf", tree / "conf")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("fedkt-*.whl")
    return path


def test_wheel_holds_every_source_file_and_every_hydra_config(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        for source in SOURCES:
            assert f"fedkt/{source.relative_to(REPO / 'src' / 'fedkt').as_posix()}" in names, source
        assert CONFIGS and (REPO / "conf" / "config.yaml") in CONFIGS
        for conf in CONFIGS:
            name = f"fedkt/conf/{conf.relative_to(REPO / 'conf').as_posix()}"
            assert name in names, f"{conf} is not in the wheel (a new folder of conf/? list it in pyproject)"
            assert whl.read(name) == conf.read_bytes(), name
        assert not [n for n in names if n.startswith(("conf/", "tests/", "presets/", "outputs/"))]


def test_installed_wheel_finds_its_configs_from_another_folder(wheel, tmp_path):
    """The wheel unpacked as site-packages (what `pip install .` puts there), used from a folder that has no
    conf/: CONF_DIR is the packaged copy, compose() reads it, and `python -m fedkt.sim`'s @hydra.main finds
    it (--cfg job composes the config and prints it without running)."""
    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the checkout's editable install
    code = ("import fedkt, fedkt.config as c\n"
            "print(fedkt.__file__); print(c.CONF_DIR)\n"
            "cfg = c.compose(['experiment=smoke', 'algorithm=fedmd'])\n"
            "print(cfg['data']['name'], cfg['algorithm']['name'], cfg['num_clients'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, conf_dir, composed = proc.stdout.splitlines()
    assert Path(module) == site / "fedkt" / "__init__.py"
    assert Path(conf_dir) == site / "fedkt" / "conf"
    assert composed == "synthetic fedmd 4"
    proc = subprocess.run([sys.executable, "-m", "fedkt.sim", "--cfg", "job", "experiment=smoke"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "name: synthetic" in proc.stdout and "num_clients: 4" in proc.stdout
    assert not (work / "outputs").exists()  # composed only: nothing ran


def test_a_checkout_reads_the_top_level_conf():
    """In the repository (editable install, or PYTHONPATH=src) the configs are conf/, where users edit them."""
    assert config.CONF_DIR == REPO / "conf"
    assert not (REPO / "src" / "fedkt" / "conf").exists()


def fedkt_imports(node: ast.AST) -> set[str]:
    """The fedkt modules an import statement names (fedkt.x -> "x")."""
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fedkt":
        if node.module == "fedkt":
            return {alias.name for alias in node.names}
        return {node.module.split(".")[1]}
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("fedkt.")}
    return set()


def test_modules_import_downwards_only():
    """No import cycle among fedkt's modules, and no fedkt import inside a function (the way a cycle is
    usually hidden). Imports of other libraries inside functions (torchvision, Hydra) are for start-up time."""
    graph, hidden = {}, []
    for source in SOURCES:
        tree = ast.parse(source.read_text())
        graph[source.stem] = set().union(*(fedkt_imports(node) for node in tree.body))
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{source.stem}.{func.name}: {ast.unparse(n)}" for n in ast.walk(func) if fedkt_imports(n)]
    assert not hidden, hidden
    assert {"client_app", "server_app", "deploy", "app_config", "sim"} <= set(graph)

    def cycle_from(module, path):
        if module in path:
            return path[path.index(module):] + [module]
        for imported in sorted(graph.get(module, ())):
            found = cycle_from(imported, path + [module])
            if found:
                return found
        return None

    for module in graph:
        cycle = cycle_from(module, [])
        assert cycle is None, " -> ".join(cycle)
    assert "deploy" not in set().union(*graph.values()), "fedkt.deploy is an entry point: nothing imports it"
