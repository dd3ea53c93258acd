"""A Keras model drawn as a column of its layers, for notebooks and documents.

`keras.utils.plot_model` draws the same with Graphviz where pydot and Graphviz's `dot` are
installed; this needs only matplotlib, so every reader's machine can draw it.
"""

from __future__ import annotations

import keras
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def layer_rows(model: keras.Model) -> list[tuple[str, str, str, int]]:
    """(layer class, layer name, output shape, parameters) of each layer, input first."""
    rows = []
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        shape = tuple(shape.shape) if shape is not None else ()
        text = "(" + ", ".join("None" if size is None else str(size) for size in shape) + ")"
        rows.append((type(layer).__name__, layer.name, text, layer.count_params()))
    return rows


def layer_diagram(model: keras.Model, title: str | None = None) -> Figure:
    """The model's layers as boxes from input to output, each with its output shape and
    parameters, and the total below."""
    rows = layer_rows(model)
    figure = Figure(figsize=(5.2, 0.72 * len(rows) + 0.9), layout="constrained")
    axes: Axes = figure.add_subplot()
    axes.set_xlim(0, 1)
    axes.set_ylim(-len(rows) - 0.3, 0.6)
    axes.axis("off")
    for i, (kind, name, shape, params) in enumerate(rows):
        y = -i
        axes.text(0.5, y, f"{kind}  ({name})\noutput {shape}" + (f", {params:,} parameters"
                                                                  if params else ""),
                  ha="center", va="center", fontsize=8.5,
                  bbox={"boxstyle": "round,pad=0.4", "facecolor": "#e8f0fe",
                        "edgecolor": "#4a6fa5"})
        if i:
            axes.annotate("", xy=(0.5, y + 0.28), xytext=(0.5, y + 0.72),
                          arrowprops={"arrowstyle": "->", "color": "#4a6fa5"})
    axes.text(0.5, -len(rows) + 0.15, f"{model.count_params():,} parameters in all",
              ha="center", va="center", fontsize=8.5)
    axes.set_title(title or model.name, fontsize=10)
    return figure
