"""A version's accuracy on a dataset split: per class, its confusion matrix, and pictures of
both (`confusion_matrix.png`, `worst_mistakes.png`: the mistakes it was surest about)."""

from __future__ import annotations

import dataclasses
import math
import os

from matplotlib.figure import Figure
import numpy as np

from keras_tutorial import data, files, versions
from keras_tutorial.errors import UserError

EVALUATION_FILE = "evaluation.json"
CONFUSION_FILE = "confusion_matrix.png"
MISTAKES_FILE = "worst_mistakes.png"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A version's predictions on a split, beside the split itself."""

    version_path: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    class_names: tuple[str, ...]
    model: str
    dataset: str

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def version(self) -> str:
        """The version's number, as its directory is named."""
        return os.path.basename(self.version_path)

    @property
    def title(self) -> str:
        """What was evaluated on what, and how well: the pictures' title."""
        accuracy = float(np.mean(self.predictions == self.labels)) if len(self.labels) else 0.0
        return (f"{self.model} version {self.version} on {self.dataset} {self.split}: "
                f"accuracy {accuracy:.4f}")


def model_name(export_dir: str) -> str:
    """The model's name: its export directory's, as `serve` names it in its URLs."""
    return os.path.basename(os.path.abspath(export_dir))


def evaluate(export_dir: str, version: int | None = None, dataset: str | None = None,
             split: str = "test", data_dir: str | None = None,
             max_examples: int = 0) -> Evaluation:
    """Runs a version's `serving_default` over a split (by default the test split it was
    trained beside)."""
    saved = versions.open_version(export_dir, version)
    return evaluate_version(saved, model_name(export_dir), dataset, split, data_dir,
                            max_examples)


def evaluate_version(saved: versions.Version, model: str, dataset: str | None = None,
                     split: str = "test", data_dir: str | None = None,
                     max_examples: int = 0) -> Evaluation:
    """Runs an opened version's `serving_default` over a split (by default of its own
    dataset)."""
    images, labels = saved.split(split, dataset, data_dir, max_examples)
    return Evaluation(saved.path, split, images, labels,
                      saved.classify(images)["probabilities"], saved.class_names, model,
                      dataset or saved.dataset)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int = data.NUM_CLASSES) -> np.ndarray:
    """Counts [true class, predicted class]."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def report(evaluation: Evaluation) -> dict:
    """Accuracy overall and per class, and the confusion matrix, as JSON-ready values."""
    matrix = confusion_matrix(evaluation.labels, evaluation.predictions)
    support = matrix.sum(axis=1)
    return {
        "version_path": evaluation.version_path,
        "model": evaluation.model,
        "dataset": evaluation.dataset,
        "split": evaluation.split,
        "examples": int(len(evaluation.labels)),
        "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
        "per_class_accuracy": {
            name: (float(matrix[i, i] / support[i]) if support[i] else None)
            for i, name in enumerate(evaluation.class_names)},
        "class_names": list(evaluation.class_names),
        "confusion_matrix": matrix.tolist(),
    }


def format_report(result: dict) -> str:
    """The report as text: accuracy, a per-class table and the confusion matrix."""
    names = result["class_names"]
    width = max(len(name) for name in names)
    lines = [f"{result['version_path']} on {result['examples']} {result['split']} examples: "
             f"accuracy {result['accuracy']:.4f}", "", f"{'class':<{width}}  accuracy"]
    for name, accuracy in result["per_class_accuracy"].items():
        lines.append(f"{name:<{width}}  " + ("-" if accuracy is None else f"{accuracy:.4f}"))
    lines += ["", "confusion matrix (rows: true class, columns: predicted class 0..9)"]
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + " ".join(f"{count:5d}" for count in row))
    return "\n".join(lines)


def plot_confusion_matrix(matrix: np.ndarray, class_names: tuple[str, ...], path: str,
                          title: str = "") -> None:
    """Writes the confusion matrix as a PNG, counts written in their cells, under `title`."""
    figure = Figure(figsize=(8, 7), layout="constrained")
    figure.suptitle(title)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                  color="white" if count > matrix.max() / 2 else "black")
    figure.savefig(path, dpi=100)


def plot_worst_mistakes(evaluation: Evaluation, path: str, count: int = 25) -> None:
    """Writes a grid of the `count` misclassified images with the most confident predictions,
    under the evaluation's title."""
    predictions = evaluation.predictions
    wrong = np.flatnonzero(predictions != evaluation.labels)
    confidence = evaluation.probabilities[wrong, predictions[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")][:count]
    columns = 5
    rows = max(1, math.ceil(len(worst) / columns))
    figure = Figure(figsize=(2 * columns, 2.3 * rows + 0.4), layout="constrained")
    figure.suptitle(evaluation.title)
    if not len(worst):
        figure.text(0.5, 0.5, "no mistakes", ha="center", va="center")
    names = evaluation.class_names
    for i, index in enumerate(worst):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.imshow(evaluation.images[index, ..., 0], cmap="gray", vmin=0, vmax=255)
        axes.set_title(f"#{index} {names[evaluation.labels[index]]}\n-> "
                       f"{names[predictions[index]]} "
                       f"{evaluation.probabilities[index, predictions[index]]:.2f}", fontsize=8)
        axes.axis("off")
    figure.savefig(path, dpi=100)


def write_outputs(evaluation: Evaluation, result: dict, output_dir: str) -> None:
    """evaluation.json, confusion_matrix.png and worst_mistakes.png in `output_dir`: written
    beside it first and moved in together, so that a failed write leaves none of them."""
    files.make_directory(output_dir)
    with files.staging_directory(output_dir) as staging:
        files.write_json(os.path.join(staging, EVALUATION_FILE), result)
        with files.naming(os.path.join(output_dir, CONFUSION_FILE)):
            plot_confusion_matrix(np.array(result["confusion_matrix"]), evaluation.class_names,
                                  os.path.join(staging, CONFUSION_FILE), evaluation.title)
        with files.naming(os.path.join(output_dir, MISTAKES_FILE)):
            plot_worst_mistakes(evaluation, os.path.join(staging, MISTAKES_FILE))
        for name in (EVALUATION_FILE, CONFUSION_FILE, MISTAKES_FILE):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))


def output_path(pattern: str, model: str, version: str) -> str:
    """`pattern` with `{model}` and `{version}` replaced: where a version's evaluation goes."""
    return pattern.replace("{model}", model).replace("{version}", version)


def run(export_dir: str, output_dir: str, version: int | None = None,
        dataset: str | None = None, split: str = "test", data_dir: str | None = None,
        max_examples: int = 0) -> tuple[dict, str]:
    """Evaluates, then writes the report and pictures to `output_dir`, in which `{model}` and
    `{version}` stand for the export directory's name and the version's number; returns the
    report and the directory written. On bad input, nothing is written."""
    saved = versions.open_version(export_dir, version)
    model = model_name(export_dir)
    target = output_path(output_dir, model, os.path.basename(saved.path))
    if os.path.exists(target) and not os.path.isdir(target):
        raise UserError(f"output directory {target} exists and is not a directory")
    evaluation = evaluate_version(saved, model, dataset, split, data_dir, max_examples)
    result = report(evaluation)
    write_outputs(evaluation, result, target)
    return result, target
