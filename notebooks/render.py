"""Runs every notebook in full mode on Fashion-MNIST and renders it to Markdown in docs/notebooks/.

    pip install -e ".[docs]"
    python notebooks/render.py                                  # all ten, one after another
    python notebooks/render.py 03_convolutional_networks.ipynb  # only those named
    python notebooks/render.py --edition=zh-CN                  # only the Chinese editions
    python notebooks/render.py --quick 03_convolutional_networks.ipynb  # time quick mode only
    python notebooks/render.py --docs_only                      # run nothing: rewrite the times

Each notebook comes in two editions, derived from its file name: `03_convolutional_networks.ipynb`
in English and `03_convolutional_networks.zh-CN.ipynb` in Simplified Chinese, with the same code
(tests/test_editions.py). Each edition is run, timed and rendered on its own, and what this
command writes into it (the run times, the rendering's header) is in its language.

Each notebook runs top to bottom with nbclient, in a kernel of this Python, without
`KERAS_TUTORIAL_QUICK` and with `KERAS_TUTORIAL_DATASET=fashion_mnist`; nbconvert then writes
`docs/notebooks/<name>.md` with its figures as PNG files in `docs/notebooks/<name>_files/`
(`<name>` is the file name without `.ipynb`, `.zh-CN` included).
The first line of a rendering records two digests: of its notebook's code cells, and of the
source of every module of keras_tutorial that the code imports, directly or through other
modules. `tests/test_notebooks.py` compares them with the current ones, so a notebook fails the
tests until it is rendered again when its code or the package code it runs changed.

Each run's wall time goes into docs/results.json, the one source of the times and accuracies
the docs show (`--quick` runs in quick mode, renders nothing and records only its time). From
it the command then rewrites the `**Run time.**` line of each notebook's introduction
(`**运行时间。**` in a Chinese edition, which may start with a copy of the English line: the
only change it makes to a stored notebook, which keeps no outputs) and the two tables of
notebooks/README.md, one per edition; `tests/test_numbers.py` checks every place that shows a
number of it. The command also prints every line a notebook printed about accuracy.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time

import nbformat
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(NOTEBOOK_DIR)
RENDER_DIR = os.path.join(REPO, "docs", "notebooks")
RESULTS = os.path.join(REPO, "docs", "results.json")
README = os.path.join(NOTEBOOK_DIR, "README.md")
PACKAGE = "keras_tutorial"
ENGLISH, CHINESE = "en", "zh-CN"  # The editions; a Chinese one's file name ends .zh-CN.ipynb.
# How the introduction's line of run times starts in each edition, and that line.
RUN_TIME_LABELS = {ENGLISH: "**Run time.**", CHINESE: "**运行时间。**"}
RUN_TIME = re.compile(f"^(?:{'|'.join(map(re.escape, RUN_TIME_LABELS.values()))}).*$",
                      re.MULTILINE)
TABLE_START = {  # Where notebooks/README.md's table of each edition starts.
    ENGLISH: "<!-- notebooks/render.py writes this table from docs/results.json. -->",
    CHINESE: "<!-- notebooks/render.py writes this table of the Chinese editions from "
             "docs/results.json. -->"}
TABLE_END = "<!-- End of the table. -->"
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "[0-9][0-9]_*.ipynb")))
DATA_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package.
CELL_TIMEOUT_S = 2 * 3600  # A cell that trains a model for its default epochs on a small CPU.
ACCURACY = re.compile(r"accuracy(?!:)", re.IGNORECASE)  # Not the progress bars' "accuracy: 0.91".
LINK = re.compile(r"\]\((?![a-z]+:|#)([^)#\s]+)")  # A relative link's target, before any #.
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # The colours of Keras's progress bars.
# Figures, Markdown and plain text: Keras's model summaries come as HTML with a plain twin.
DISPLAY_PRIORITY = ["image/png", "text/markdown", "text/plain"]


def code_digest(nb: nbformat.NotebookNode) -> str:
    """A digest of the notebook's code cells, in order: what its rendering was made from."""
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()[:16]


def python(source: str) -> str:
    """A code cell as Python, line for line: each of IPython's magics and shell escapes (`%`,
    `!`) becomes `pass`, at its indentation."""
    return "\n".join(re.sub(r"^(\s*)[%!].*$", r"\1pass", line) for line in source.splitlines())


def _module_file(module: str, root: str) -> str | None:
    """The file of `module` (a dotted name under the package) in `root`, if it is a module."""
    path = os.path.join(root, *module.split("."))
    for candidate in (path + ".py", os.path.join(path, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _imported(tree: ast.AST, root: str) -> set[str]:
    """The package's modules `tree` imports, at its top or inside functions, with every
    package above each (whose `__init__` runs first)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == PACKAGE:
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)
                      if _module_file(".".join(parts[:i]), root)}
    return found


def package_modules(nb: nbformat.NotebookNode, root: str = REPO) -> list[str]:
    """Every module of the package in `root` that the notebook's code runs: those it imports,
    and those they import, transitively (found with `ast`, as tests/test_install.py does)."""
    todo = _imported(ast.parse("\n".join(python(cell.source) for cell in nb.cells
                                         if cell.cell_type == "code")), root)
    found = set()
    while todo:
        module = todo.pop()
        if module not in found:
            found.add(module)
            with open(_module_file(module, root), encoding="utf-8") as f:
                todo |= _imported(ast.parse(f.read()), root)
    return sorted(found)


def package_digest(nb: nbformat.NotebookNode, root: str = REPO) -> str:
    """A digest of the source of every package module the notebook runs."""
    digest = hashlib.sha256()
    for module in package_modules(nb, root):
        with open(_module_file(module, root), "rb") as f:
            digest.update(module.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:16]


def digest_line(nb: nbformat.NotebookNode) -> str:
    """The first line of the notebook's rendering."""
    return (f"<!-- Rendered by notebooks/render.py from code digest {code_digest(nb)} and "
            f"package digest {package_digest(nb)}; do not edit. -->")


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
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{digest_line(nb)}\n\n{header}\n\n{body.strip()}\n")
    return path


def accuracy_lines(nb: nbformat.NotebookNode) -> list[str]:
    """Every line the notebook printed about accuracy."""
    return [line for cell in nb.cells for output in cell.get("outputs", [])
            if output.output_type == "stream"
            for line in output.text.splitlines() if ACCURACY.search(line)]


def machine() -> dict:
    """This machine, as results.json records where a time was measured."""
    processor = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        processor = names[0].strip() if names else processor
    return {"cpu_cores": os.cpu_count(), "processor": processor}


def read_results() -> dict:
    with open(RESULTS) as f:
        return json.load(f)


def record_time(name: str, mode: str, seconds: float) -> None:
    """Records a notebook's wall time in `mode` ("quick" or "full") in docs/results.json."""
    results = read_results()
    results["notebooks"][name][mode] = {
        "seconds": round(seconds), "date": datetime.date.today().isoformat(), **machine()}
    with open(RESULTS, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")


# What this command writes into each edition, in its language.
UNITS = {ENGLISH: {"s": "s", "min": "min"}, CHINESE: {"s": "秒", "min": "分钟"}}
SOURCE = "[docs/results.json](../docs/results.json)"
TIMING_SENTENCES = {  # The same cores in both modes, then different ones.
    ENGLISH: (("**Run time.** On {cores} CPU cores this notebook takes about {quick} in quick "
               "mode and about {full} in full mode ({source})."),
              ("**Run time.** This notebook takes about {quick} in quick mode on {quick_cores} "
               "CPU cores and about {full} in full mode on {full_cores} CPU cores ({source}).")),
    CHINESE: (("**运行时间。** 在 {cores} 个 CPU 核上，本笔记本快速模式约需 {quick}，完整模式约需 "
               "{full}（{source}）。"),
              ("**运行时间。** 本笔记本快速模式在 {quick_cores} 个 CPU 核上约需 {quick}，完整模式在 "
               "{full_cores} 个 CPU 核上约需 {full}（{source}）。"))}
HEADERS = {  # The line under a rendering's digests.
    ENGLISH: "*[`notebooks/{file}`](../../notebooks/{file}), run in full mode on Fashion-MNIST "
             "by `python notebooks/render.py` on {date}, on {cores} CPU cores, in {time}.*",
    CHINESE: "*[`notebooks/{file}`](../../notebooks/{file})：由 `python notebooks/render.py` 于 "
             "{date} 在 Fashion-MNIST 上以完整模式运行，使用 {cores} 个 CPU 核，用时 {time}。*"}


def edition(name: str) -> str:
    """The edition of a notebook, from its name or path: `01_x.zh-CN.ipynb` is the Chinese
    edition of the English `01_x.ipynb`."""
    return CHINESE if notebook_name(name).endswith(f".{CHINESE}") else ENGLISH


def notebooks_of(language: str) -> list[str]:
    """The paths of the notebooks of one edition, in reading order."""
    return [path for path in NOTEBOOKS if edition(path) == language]


def about(seconds: float, language: str = ENGLISH) -> str:
    """A rough duration: to 5 s under a minute, else to the minute."""
    units = UNITS[language]
    if seconds < 57.5:
        return f"{max(5, 5 * round(seconds / 5))} {units['s']}"
    return f"{int(seconds / 60 + 0.5)} {units['min']}"


def minutes_seconds(seconds: float, language: str = ENGLISH) -> str:
    """An exact duration, as the renderings' headers and docs/accuracy.md write it."""
    units = UNITS[language]
    minutes, seconds = divmod(round(seconds), 60)
    return (f"{minutes} {units['min']} {seconds} {units['s']}" if minutes
            else f"{seconds} {units['s']}")


def measured(name: str, results: dict) -> tuple[dict, dict]:
    """The notebook's recorded times in quick and in full mode, or a LookupError that says how
    to measure those missing."""
    entry = results["notebooks"].get(name, {})
    missing = [mode for mode in ("quick", "full") if mode not in entry]
    if missing:
        commands = [f"python notebooks/render.py{' --quick' if mode == 'quick' else ''} "
                    f"{name}.ipynb" for mode in missing]
        modes = " or ".join(f"{mode}-mode" for mode in missing)
        raise LookupError(f"docs/results.json has no {modes} time for {name}: run "
                          f"{' and '.join(commands)}")
    return entry["quick"], entry["full"]


def timing_sentence(name: str, results: dict | None = None) -> str:
    """What a notebook's introduction says of its run times, from docs/results.json, in the
    notebook's language."""
    results = results or read_results()
    quick, full = measured(name, results)
    language = edition(name)
    same_cores, other_cores = TIMING_SENTENCES[language]
    return (same_cores if quick["cpu_cores"] == full["cpu_cores"] else other_cores).format(
        cores=full["cpu_cores"], quick_cores=quick["cpu_cores"], full_cores=full["cpu_cores"],
        quick=about(quick["seconds"], language), full=about(full["seconds"], language),
        source=SOURCE)


def rendering_header(notebook: str, date: str, cores: int, seconds: float) -> str:
    """The line under a rendering's digests: which notebook ran where, when, and how long."""
    language = edition(notebook)
    return HEADERS[language].format(file=os.path.basename(notebook), date=date, cores=cores,
                                    time=minutes_seconds(seconds, language))


def results_table(results: dict | None = None, language: str = ENGLISH) -> str:
    """notebooks/README.md's table of run times and accuracies of the notebooks of one
    edition, from docs/results.json."""
    results = results or read_results()
    rows = [("| notebook | quick mode | full mode | rendered on | test accuracy of the models "
             "it trains as the command line does |"), "|---|---|---|---|---|"]
    for name, entry in results["notebooks"].items():
        if edition(name) != language:
            continue
        times = [f"about {about(entry[mode]['seconds'])}, {entry[mode]['cpu_cores']} cores"
                 if mode in entry else "not measured" for mode in ("quick", "full")]
        accuracies = ", ".join(f"{model} {results['models'][model]['test_accuracy']:.2%}"
                               for model in entry["command_line_models"])
        rows.append(f"| [{int(name[:2])}]({name}.ipynb) | {times[0]} | {times[1]} | "
                    f"{entry.get('full', {}).get('date', 'never')} | {accuracies or 'none'} |")
    return "\n".join(rows)


def write_run_times(notebook: str) -> None:
    """Rewrites the `**Run time.**` line of the notebook's introduction from results.json, in
    the notebook's language."""
    nb = nbformat.read(notebook, as_version=4)
    intro = nb.cells[0]
    try:
        sentence = timing_sentence(notebook_name(notebook))
    except LookupError as e:
        print(f"    {e}")
        return
    if not RUN_TIME.search(intro.source):
        print(f"    {os.path.basename(notebook)} has no **Run time.** line in its introduction")
    elif RUN_TIME.sub(lambda _: sentence, intro.source) != intro.source:
        intro.source = RUN_TIME.sub(lambda _: sentence, intro.source)
        nbformat.write(nb, notebook)
        print(f"    wrote its run times into {os.path.relpath(notebook)}")


def write_results_table() -> None:
    """Rewrites notebooks/README.md's tables, one per edition, from results.json."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    for language, start in TABLE_START.items():
        before, rest = text.split(start, 1)
        after = rest.split(TABLE_END, 1)[1]
        text = f"{before}{start}\n{results_table(language=language)}\n{TABLE_END}{after}"
    with open(README, "w", encoding="utf-8") as f:
        f.write(text)


def notebook_name(notebook: str) -> str:
    """The notebook's file name without `.ipynb`: its key in results.json."""
    return os.path.basename(notebook).removesuffix(".ipynb")


def run(notebook: str, mode: str) -> None:
    """Runs the notebook in `mode`, records its time, rewrites its run times, renders it in
    full mode (with those run times), and prints every line it printed about accuracy."""
    name = os.path.basename(notebook)
    print(f"{name}: running in {mode} mode", flush=True)
    started = time.perf_counter()
    nb = execute(notebook)
    seconds = time.perf_counter() - started
    record_time(notebook_name(notebook), mode, seconds)
    print(f"{name}: {minutes_seconds(seconds)}, recorded in {os.path.relpath(RESULTS)}")
    write_run_times(notebook)
    nb.cells[0].source = nbformat.read(notebook, as_version=4).cells[0].source
    if mode == "full":
        header = rendering_header(notebook, datetime.date.today().isoformat(), os.cpu_count(),
                                  seconds)
        print(f"    wrote {os.path.relpath(render(nb, notebook, header))}")
    for line in accuracy_lines(nb):
        print(f"    {line}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                        help="file names in notebooks/ (default: all)")
    parser.add_argument("--data_dir", default=DATA_DIR,
                        help="Fashion-MNIST's IDX files (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="run in quick mode and record its time only; render nothing")
    parser.add_argument("--edition", choices=(ENGLISH, CHINESE),
                        help="only the notebooks of this edition (default: both)")
    parser.add_argument("--docs_only", action="store_true",
                        help="run nothing: rewrite the run times in the notebooks' introductions "
                             "and notebooks/README.md's tables from docs/results.json")
    args = parser.parse_args()
    notebooks = [os.path.join(NOTEBOOK_DIR, name) for name in args.notebooks] or NOTEBOOKS
    notebooks = [path for path in notebooks if args.edition in (None, edition(path))]
    os.environ.pop("KERAS_TUTORIAL_QUICK", None)
    if args.quick:
        os.environ["KERAS_TUTORIAL_QUICK"] = "1"
    os.environ.pop("MPLBACKEND", None)  # The kernel's inline backend draws the figures.
    os.environ.update(KERAS_TUTORIAL_DATASET="fashion_mnist", KERAS_TUTORIAL_DATA_DIR=args.data_dir)
    os.makedirs(RENDER_DIR, exist_ok=True)
    mode = "quick" if args.quick else "full"
    for notebook in notebooks:
        if args.docs_only:
            write_run_times(notebook)
        else:
            run(notebook, mode)
    write_results_table()


if __name__ == "__main__":
    main()
