"""The notebooks run top to bottom in quick mode, draw their figures, and are stored clean.

Both editions of each notebook, English and Chinese (`NN_name.zh-CN.ipynb`), are checked alike;
that they hold the same code is tests/test_editions.py's. Each notebook is executed with
nbclient in a kernel of the Python running the tests (a kernelspec written to a temporary
directory points at `sys.executable`), so it sees the same installed package. Two cells are
added around the notebook while it runs, never stored: the first records every figure the
notebook displays and checks that it has a title and labelled axes and that its font has a
glyph for every character it shows (the Chinese labels need a CJK font: notebooks/matplotlibrc
picks one, .ci/run installs Debian's fonts-noto-cjk), the last reports what was recorded.

The renderings in docs/notebooks/ (made by notebooks/render.py, in full mode) are checked
against the notebooks' code, and the package code it runs, without running anything.
"""

import json
import os
import re
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from notebook_render import render

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "notebooks")
NOTEBOOKS = render.NOTEBOOKS  # Both editions of each.
KERNEL_NAME = "keras-tutorial-tests"
CELL_TIMEOUT_S = 600
REPORT_MARKER = "FIGURE-REPORT:"
DRAWS = re.compile(r"^(plt\.show\(\)|show_images\()", re.MULTILINE)  # A top-level call that draws.
RENDERINGS_MAX_BYTES = 3 * 2**20  # Those of one edition.
FIGURE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


ENGLISH = render.notebooks_of(render.ENGLISH)

# Wraps the canvas method that IPython's inline backend calls to render each displayed figure.
FIGURE_CHECK = '''
import warnings as _warnings

import matplotlib.backend_bases as _backend_bases

_figure_report = {"figures": 0, "problems": []}
_print_figure = _backend_bases.FigureCanvasBase.print_figure


def _figure_problems(figure):
    axes = [ax for ax in figure.axes if ax.get_visible()]
    plots = [ax for ax in axes if getattr(ax, "_colorbar", None) is None]
    problems = []
    if not (figure.get_suptitle() or all(ax.get_title() for ax in plots)):
        problems.append("no title")
    for ax in plots:
        if not ax.axison:  # A diagram drawn without axes has none to label.
            continue
        if not (ax.get_xlabel() or figure.get_supxlabel()):
            problems.append(f"axes {ax.get_title()!r} has no x label")
        if not (ax.get_ylabel() or figure.get_supylabel()):
            problems.append(f"axes {ax.get_title()!r} has no y label")
    for ax in axes:
        if ax not in plots and not (ax.get_ylabel() or ax.get_xlabel()):
            problems.append("a colorbar has no label")
    return problems


def _checked_print_figure(self, *args, **kwargs):
    _figure_report["figures"] += 1
    title = self.figure.get_suptitle() or "untitled figure"
    _figure_report["problems"] += [f"{title}: {p}" for p in _figure_problems(self.figure)]
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        printed = _print_figure(self, *args, **kwargs)
    missing = sorted({str(w.message) for w in caught if "missing from font" in str(w.message)})
    if missing:  # matplotlib draws a box for each: "Glyph 20013 (...) missing from font(s) ..."
        _figure_report["problems"].append(
            f"{title}: {len(missing)} characters have no glyph, e.g. {missing[0]}")
    return printed


_backend_bases.FigureCanvasBase.print_figure = _checked_print_figure
'''

FIGURE_REPORT = f'''
import json as _json
print("{REPORT_MARKER}" + _json.dumps(_figure_report))
'''


@pytest.fixture(scope="session")
def kernel_spec_manager(tmp_path_factory):
    """A kernelspec that starts a kernel with the interpreter running the tests."""
    kernels = tmp_path_factory.mktemp("kernels")
    os.makedirs(kernels / KERNEL_NAME)
    with open(kernels / KERNEL_NAME / "kernel.json", "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"],
                   "display_name": "keras-tutorial tests", "language": "python"}, f)
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def _outputs(cell, output_type=None):
    return [o for o in cell.get("outputs", []) if output_type in (None, o["output_type"])]


def _text(cell):
    return "".join(o.get("text", "") for o in _outputs(cell, "stream"))


def test_notebooks_are_numbered_in_reading_order():
    numbers = [int(os.path.basename(path)[:2]) for path in ENGLISH]
    assert numbers == list(range(1, 6)), [os.path.basename(path) for path in ENGLISH]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert nb.cells[0].cell_type == "markdown"  # Prose first.


def test_readme_check_list_names_real_sections():
    """Every row of the check list points to a notebook and a heading that exist."""
    with open(os.path.join(NOTEBOOK_DIR, "README.md")) as f:
        readme = f.read()
    rows = re.findall(r"^\| *(?!concept|---)[^|]+\| *\[(\d\d)\]\([^)]*\) *\| *([^|]+?) *\|",
                      readme, re.MULTILINE)
    assert len(rows) >= 15, "the check list is missing or has changed format"
    headings = {}
    for path in ENGLISH:  # The headings of the English editions.
        nb = nbformat.read(path, as_version=4)
        headings[os.path.basename(path)[:2]] = [
            line.lstrip("#").strip() for cell in nb.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if line.startswith("#")]
    for number, heading in rows:
        assert heading in headings[number], (number, heading)


DIGESTS = re.compile(r"code digest (\w+)(?: and package digest (\w+))?")


def _stale(path: str, first_line: str) -> str | None:
    """What changed since the rendering whose first line is `first_line`, or None."""
    nb = nbformat.read(path, as_version=4)
    if first_line == render.digest_line(nb):
        return None
    recorded = DIGESTS.search(first_line)
    if not recorded or recorded.group(1) != render.code_digest(nb):
        return "the notebook's code changed since it was rendered"
    modules = ", ".join(render.package_modules(nb))
    if not recorded.group(2):
        return f"the rendering records no digest of the package code the notebook runs ({modules})"
    return f"the package code the notebook runs changed since it was rendered ({modules})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_rendering_is_of_the_current_code(path):
    """docs/notebooks/ shows what the notebook's code, and the package code it runs, do now,
    every figure included: a notebook fails here until it is rendered again."""
    rendering = render.rendering_path(path)
    command = f"python notebooks/render.py {os.path.basename(path)}"
    assert os.path.isfile(rendering), f"no rendering: run {command}"
    with open(rendering) as f:
        text = f.read()
    stale = _stale(path, text.splitlines()[0])
    assert stale is None, f"{stale}: run {command}"
    figures = FIGURE_LINK.findall(text)
    assert figures, "the rendering shows no figure"
    for figure in figures:
        assert os.path.isfile(os.path.join(render.RENDER_DIR, figure)), figure


def _package(root, modules: dict[str, str]) -> None:
    """Writes a package named as the project's into `root`, `modules` its files' sources."""
    for name, source in modules.items():
        path = root / render.PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_package_digest_covers_the_modules_a_notebook_imports_transitively(tmp_path):
    p = render.PACKAGE
    _package(tmp_path, {"__init__.py": "", "a.py": f"from {p} import b\n",
                        "b.py": f"def f():\n    import {p}.sub.c\n",
                        "sub/__init__.py": "", "sub/c.py": "", "unused.py": ""})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"%matplotlib inline\n!echo a shell line\nfrom {p} import a\nfrom {p}.a import b")])
    assert render.package_modules(nb, str(tmp_path)) == [
        p, f"{p}.a", f"{p}.b", f"{p}.sub", f"{p}.sub.c"]
    before = render.package_digest(nb, str(tmp_path))
    (tmp_path / p / "unused.py").write_text("x = 1\n")
    assert render.package_digest(nb, str(tmp_path)) == before
    (tmp_path / p / "sub" / "c.py").write_text("x = 1\n")
    assert render.package_digest(nb, str(tmp_path)) != before


def test_a_rendering_is_stale_when_the_package_code_it_ran_changed():
    path = os.path.join(NOTEBOOK_DIR, "01_from_tf1_to_keras.ipynb")
    nb = nbformat.read(path, as_version=4)
    assert {f"{render.PACKAGE}.experiment", f"{render.PACKAGE}.loop"} <= set(
        render.package_modules(nb))
    current = render.digest_line(nb)
    assert _stale(path, current) is None
    other_package = current.replace(render.package_digest(nb), "0" * 16)
    assert "package code" in _stale(path, other_package)
    other_code = current.replace(render.code_digest(nb), "0" * 16)
    assert _stale(path, other_code) == "the notebook's code changed since it was rendered"


def test_renderings_are_small():
    sizes = {render.ENGLISH: 0, render.CHINESE: 0}
    for directory, _, names in os.walk(render.RENDER_DIR):
        for name in names:  # A rendering or a figure, named after its notebook.
            edition = render.CHINESE if f".{render.CHINESE}" in name else render.ENGLISH
            sizes[edition] += os.path.getsize(os.path.join(directory, name))
    assert all(size < RENDERINGS_MAX_BYTES for size in sizes.values()), (
        f"bytes in {render.RENDER_DIR}, by edition: {sizes}")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_quick_mode(path, kernel_spec_manager, monkeypatch):
    monkeypatch.setenv("KERAS_TUTORIAL_QUICK", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # Let the kernel use its inline backend.
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(FIGURE_CHECK))
    nb.cells.append(nbformat.v4.new_code_cell(FIGURE_REPORT))
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_spec_manager)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                            resources={"metadata": {"path": NOTEBOOK_DIR}})
    try:
        client.execute()  # Raises CellExecutionError, with the cell and traceback, on any error.
    finally:
        if km.has_kernel:  # A client given a kernel manager leaves the kernel running.
            km.shutdown_kernel()

    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    data_lines = [line for cell in code_cells for line in _text(cell).splitlines()
                  if line.startswith("Data: ")]
    assert len(data_lines) == 1, "the notebook must say once which data it uses"

    drawn = 0
    for cell in code_cells:
        images = [o for o in _outputs(cell) if "image/png" in o.get("data", {})]
        drawn += len(images)
        if DRAWS.search(cell.source):
            assert images, f"this cell drew no figure:\n{cell.source[:300]}"
    assert drawn >= 2, f"only {drawn} figures"

    report = json.loads(_text(code_cells[-1]).split(REPORT_MARKER)[1])
    assert report["figures"] == drawn
    assert report["problems"] == []
