"""Runs every notebook in full mode on Fashion-MNIST and renders it to Markdown in docs/notebooks/.

    pip install -e ".[docs]"
    python notebooks/render.py                                  # all five, one after another
    python notebooks/render.py 03_convolutional_networks.ipynb  # only those named

Each notebook runs top to bottom with nbclient, in a kernel of this Python, without
`KERAS_TUTORIAL_QUICK` and with `KERAS_TUTORIAL_DATASET=fashion_mnist`; nbconvert then writes
`docs/notebooks/<name>.md` with its figures as PNG files in `docs/notebooks/<name>_files/`.
The stored notebooks are not touched: they stay without outputs. The first line of a rendering
records a digest of its notebook's code cells, which `tests/test_notebooks.py` compares with
the notebook's own, so a notebook whose code changed fails the tests until it is rendered
again. For the record in notebooks/README.md, the command prints each notebook's wall time
and every line it printed about accuracy.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time

from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
import nbformat
from nbclient import NotebookClient

NOTEBOOK_DIR = os.path.dirname(os.path.abspath(__file__))
RENDER_DIR = os.path.join(os.path.dirname(NOTEBOOK_DIR), "docs", "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "[0-9][0-9]_*.ipynb")))
DATA_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package.
CELL_TIMEOUT_S = 2 * 3600  # A cell that trains a model for its default epochs on a small CPU.
ACCURACY = re.compile(r"accuracy(?!:)", re.I)  # Not the progress bars' "accuracy: 0.91".
LINK = re.compile(r"\]\((?![a-z]+:|#)([^)#\s]+)")  # A relative link's target, before any #.
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # The colours of Keras's progress bars.
# Figures, Markdown and plain text: Keras's model summaries come as HTML with a plain twin.
DISPLAY_PRIORITY = ["image/png", "text/markdown", "text/plain"]


def code_digest(nb: nbformat.NotebookNode) -> str:
    """A digest of the notebook's code cells, in order: what its rendering was made from."""
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()[:16]


def digest_line(nb: nbformat.NotebookNode) -> str:
    """The first line of the notebook's rendering."""
    return f"<!-- Rendered by notebooks/render.py from code digest {code_digest(nb)}; do not edit. -->"


def rendering_path(notebook: str) -> str:
    return os.path.join(RENDER_DIR, os.path.basename(notebook).removesuffix(".ipynb") + ".md")


def relink(markdown: str) -> str:
    """Points the relative links of a notebook's prose from docs/notebooks/ to the same files,
    and a link to a notebook to its rendering."""
    def retarget(match: re.Match) -> str:
        path = os.path.normpath(os.path.join(NOTEBOOK_DIR, match.group(1)))
        if path in NOTEBOOKS:
            path = rendering_path(path)
        return "](" + os.path.relpath(path, RENDER_DIR)

    return LINK.sub(retarget, markdown)


def execute(notebook: str) -> nbformat.NotebookNode:
    """The notebook run top to bottom in a kernel of this Python, with its outputs."""
    nb = nbformat.read(notebook, as_version=4)
    spec = write_kernel_spec()  # A temporary kernelspec that starts sys.executable.
    km = KernelManager(kernel_name=os.path.basename(spec),
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[os.path.dirname(spec)]))
    try:
        # coalesce_streams keeps what a front end shows of a progress bar: its last state.
        NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                       coalesce_streams=True,
                       resources={"metadata": {"path": NOTEBOOK_DIR}}).execute()
    finally:
        if km.has_kernel:  # A client given a kernel manager leaves the kernel running.
            km.shutdown_kernel()
        shutil.rmtree(os.path.dirname(spec))
    return nb


def render(nb: nbformat.NotebookNode, notebook: str, header: str) -> str:
    """Writes the executed notebook as Markdown, its figures as PNG files beside it."""
    # The docs extra, imported here: the tests use this module for code_digest alone.
    from nbconvert import MarkdownExporter
    from traitlets.config import Config

    stem = os.path.basename(notebook).removesuffix(".ipynb")
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = relink(cell.source)
            continue
        # Standard error holds TensorFlow's start-up logs, which differ from machine to machine.
        cell.outputs = [output for output in cell.outputs if output.get("name") != "stderr"]
        for output in cell.outputs:
            if output.output_type == "stream":
                output.text = ANSI.sub("", output.text)
    exporter = MarkdownExporter(config=Config(NbConvertBase={
        "display_data_priority": DISPLAY_PRIORITY}))
    body, resources = exporter.from_notebook_node(
        nb, resources={"output_files_dir": f"{stem}_files", "unique_key": stem})
    shutil.rmtree(os.path.join(RENDER_DIR, f"{stem}_files"), ignore_errors=True)
    for name, content in resources["outputs"].items():
        os.makedirs(os.path.dirname(os.path.join(RENDER_DIR, name)), exist_ok=True)
        with open(os.path.join(RENDER_DIR, name), "wb") as f:
            f.write(content)
    path = rendering_path(notebook)
    with open(path, "w") as f:
        f.write(f"{digest_line(nb)}\n\n{header}\n\n{body.strip()}\n")
    return path


def accuracy_lines(nb: nbformat.NotebookNode) -> list[str]:
    """Every line the notebook printed about accuracy."""
    return [line for cell in nb.cells for output in cell.get("outputs", [])
            if output.output_type == "stream"
            for line in output.text.splitlines() if ACCURACY.search(line)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                        help="file names in notebooks/ (default: all)")
    parser.add_argument("--data_dir", default=DATA_DIR,
                        help="Fashion-MNIST's IDX files (default: %(default)s)")
    args = parser.parse_args()
    notebooks = [os.path.join(NOTEBOOK_DIR, name) for name in args.notebooks] or NOTEBOOKS
    os.environ.pop("KERAS_TUTORIAL_QUICK", None)
    os.environ.pop("MPLBACKEND", None)  # The kernel's inline backend draws the figures.
    os.environ.update(KERAS_TUTORIAL_DATASET="fashion_mnist", KERAS_TUTORIAL_DATA_DIR=args.data_dir)
    os.makedirs(RENDER_DIR, exist_ok=True)
    for notebook in notebooks:
        name = os.path.basename(notebook)
        print(f"{name}: running", flush=True)
        started = time.perf_counter()
        nb = execute(notebook)
        minutes, seconds = divmod(round(time.perf_counter() - started), 60)
        today = datetime.date.today().isoformat()
        header = (f"*[`notebooks/{name}`](../../notebooks/{name}), run in full mode on "
                  f"Fashion-MNIST by `python notebooks/render.py` on {today}, on "
                  f"{os.cpu_count()} CPU cores, in {minutes} min {seconds} s.*")
        path = render(nb, notebook, header)
        print(f"{name}: {minutes} min {seconds} s; wrote {os.path.relpath(path)}")
        for line in accuracy_lines(nb):
            print(f"    {line}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
