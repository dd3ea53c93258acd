"""`pip install .` without extras gives working commands: checked offline against setup.cfg.

The commands run in a view of this environment that holds only what a plain install brings:
links to the files of `install_requires`, their dependencies (and the extras those ask for),
and the package itself, with Python's own site-packages left out. Anything else a command
imports, a test-only package say, is then simply not there, as it would not be after
`pip install .`.
"""

import ast
import configparser
import importlib.metadata
import json
import os
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "keras_tutorial"
COMMANDS = ("train", "predict", "evaluate", "tflite", "launch", "configurations")


def install_requires() -> list[Requirement]:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    lines = parser["options"]["install_requires"].splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    return requirement.marker is None or any(
        requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions that `requirements` bring, with the extras they ask for."""
    seen, todo = set(), [(r, frozenset()) for r in requirements]
    while todo:
        requirement, asked_by = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen or not _applies(requirement, asked_by):
            continue
        seen.add(key)
        try:
            depends = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # Not for this platform, so not installed here either.
        todo += [(Requirement(text), key[1]) for text in depends]
    return {name for name, _ in seen}


def make_view(directory, distributions: set[str]) -> str:
    """A directory of links to every top-level file of `distributions` and to the package."""
    os.makedirs(directory)
    for name in distributions:
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for top in {path.parts[0] for path in distribution.files or []} - {"..", "__pycache__"}:
            source = distribution.locate_file(top)
            target = os.path.join(directory, top)
            if os.path.exists(source) and not os.path.lexists(target):
                os.symlink(source, target)
    os.symlink(os.path.join(ROOT, PACKAGE), os.path.join(directory, PACKAGE))
    return str(directory)


def _plain(view: str, *args: str, cwd) -> subprocess.CompletedProcess:
    """Python without its site-packages (-S), the view in their place."""
    return subprocess.run([sys.executable, "-S", "-s", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "PYTHONPATH": view})


IMPORTS = f"""
import importlib, importlib.util, sys
for absent in ("pytest", "hypothesis", "nbclient", "starlette", "uvicorn", "torch", "jax"):
    assert importlib.util.find_spec(absent) is None, absent + " should not be installed"
for command in {COMMANDS!r}:
    importlib.import_module("{PACKAGE}." + command)
import tensorflow_datasets  # Imported by the data loader when a dataset is not local.
print("imported")
"""


@pytest.mark.slow
def test_a_plain_install_trains_exports_evaluates_predicts_and_converts(tmp_path):
    view = make_view(tmp_path / "site", closure(install_requires()))
    imported = _plain(view, "-c", IMPORTS, cwd=tmp_path)
    assert imported.stdout.strip() == "imported", imported.stderr[-3000:]
    trained = _plain(view, "-m", f"{PACKAGE}.train", "--dataset=synthetic", "--max_examples=300",
                     "--validation_size=50", "--epochs=1", "--noverbose", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    export_dir = os.path.dirname(json.loads(trained.stdout.strip().splitlines()[-1])["export_path"])
    evaluated = _plain(view, "-m", f"{PACKAGE}.evaluate", f"--export_dir={export_dir}",
                       "--output_dir=evaluation", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "evaluation")) == [
        "confusion_matrix.png", "evaluation.json", "worst_mistakes.png"]
    (tmp_path / "digit.png").write_bytes(tf.io.encode_png(tf.zeros([28, 28, 1], tf.uint8)).numpy())
    predicted = _plain(view, "-m", f"{PACKAGE}.predict", f"--export_dir={export_dir}",
                       "digit.png", cwd=tmp_path)
    assert predicted.returncode == 0 and "digit.png" in predicted.stdout, predicted.stderr[-3000:]
    converted = _plain(view, "-m", f"{PACKAGE}.tflite", f"--export_dir={export_dir}",
                       "--max_examples=50", cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr[-3000:]


def _parsed(module: str) -> ast.Module:
    with open(os.path.join(ROOT, PACKAGE, f"{module}.py")) as f:
        return ast.parse(f.read())


def _imported_names(tree: ast.Module) -> set[str]:
    """The top-level names a module imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _package_modules(tree: ast.Module) -> set[str]:
    """The package's modules a module imports (`from keras_tutorial import x` or `.x`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            found.add(node.module.split(".")[1])
    return found


def command_modules() -> dict[str, ast.Module]:
    """The commands and every module of the package they import, parsed."""
    found, todo = {}, list(COMMANDS)
    while todo:
        module = todo.pop()
        if module not in found:
            found[module] = _parsed(module)
            todo += _package_modules(found[module])
    return found


def test_every_third_party_import_of_the_commands_is_declared_in_install_requires():
    declared = {canonicalize_name(r.name) for r in install_requires()}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, tree in sorted(command_modules().items()):
        for name in _imported_names(tree) - set(sys.stdlib_module_names) - {PACKAGE}:
            if not {canonicalize_name(d) for d in providers.get(name, [name])} & declared:
                undeclared.setdefault(name, []).append(module)
    assert undeclared == {}, f"imported but not in install_requires: {undeclared}"
