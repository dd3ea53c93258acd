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

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def evaluate(export_dir: str, version: int | None = None, dataset: str | None = None,
             split: str = "test", data_dir: str | None = None,
             max_examples: int = 0) -> Evaluation:
    """Runs a version's `serving_default` over a split (by default the test split it was
    trained beside)."""
    saved = versions.open_version(export_dir, version)
    images, labels = saved.split(split, dataset, data_dir, max_examples)
    return Evaluation(saved.path, split, images, labels,
                      saved.classify(images)["probabilities"], saved.class_names)


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


def plot_confusion_matrix(matrix: np.ndarray, class_names: tuple[str, ...], path: str) -> None:
    """Writes the confusion matrix as a PNG, counts written in their cells."""
    figure = Figure(figsize=(8, 7), layout="constrained")
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
    """Writes a grid of the `count` misclassified images with the most confident predictions."""
    predictions = evaluation.predictions
    wrong = np.flatnonzero(predictions != evaluation.labels)
    confidence = evaluation.probabilities[wrong, predictions[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")][:count]
    columns = 5
    rows = max(1, math.ceil(len(worst) / columns))
    figure = Figure(figsize=(2 * columns, 2.3 * rows), layout="constrained")
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
                                  os.path.join(staging, CONFUSION_FILE))
        with files.naming(os.path.join(output_dir, MISTAKES_FILE)):
            plot_worst_mistakes(evaluation, os.path.join(staging, MISTAKES_FILE))
        for name in (EVALUATION_FILE, CONFUSION_FILE, MISTAKES_FILE):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))


def run(export_dir: str, output_dir: str, version: int | None = None,
        dataset: str | None = None, split: str = "test", data_dir: str | None = None,
        max_examples: int = 0) -> dict:
    """Evaluates, then writes the report and pictures to `output_dir`; on bad input, nothing."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"output directory {output_dir} exists and is not a directory")
    evaluation = evaluate(export_dir, version, dataset, split, data_dir, max_examples)
    result = report(evaluation)
    write_outputs(evaluation, result, output_dir)
    return result
