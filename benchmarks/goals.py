"""Every goal the benchmarks check, each threshold written once (benchmarks/README.md, Goals).

`SPEED_TARGETS` are the goals set for the first benchmark, against the tutorial's TF1 loop and
the input pipeline; `PEER_GOALS` those against PyTorch and Keras on JAX, per model;
`ACCURACY_TARGETS` the test accuracy at which a peer run's time to accuracy stops.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Goal:
    """A measured ratio that must be at least (`>=`) or at most (`<=`) a threshold."""

    what: str  # As the tables print it.
    comparison: str
    threshold: float

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.comparison == ">=" else value <= self.threshold

    def row(self, value: float, what: str | None = None) -> dict:
        """The goal with a measured value, as results.json records it."""
        return {"target": what or self.what, "value": value, "comparison": self.comparison,
                "threshold": self.threshold, "met": self.met(value)}


SPEED_TARGETS = {
    "mlp_vs_tf1": Goal("MLP training vs TF1", ">=", 1.25),
    "first_epoch": Goal("first epoch / steady epoch", "<=", 1.3),
    "pipeline": Goal("pipeline / fastest model", ">=", 10),
}
PEER_GOALS = {
    "training_vs_fastest_peer": Goal("training: this project / fastest peer", ">=", 1.0),
    "time_to_accuracy_best_peer_vs_project": Goal(
        "time to accuracy: best peer / this project", ">=", 1.0),
}
# Per dataset and model; other datasets have none, and their peer runs train a fixed length.
ACCURACY_TARGETS = {"fashion_mnist": {"mlp": 0.88, "cnn": 0.92, "lstm": 0.88}}

INTERLEAVED = "(interleaved rounds, median)"


def speed_rows(results: dict) -> list[dict]:
    """`SPEED_TARGETS` checked against a run's figures: the MLP's from the interleaved rounds
    where there were any, every other model's first epoch, the pipeline against the fastest
    model."""
    interleaved, models = results["interleaved"], results["models"]
    targets, rows = SPEED_TARGETS, []
    if interleaved["rounds"]:
        rows.append(targets["mlp_vs_tf1"].row(
            interleaved["vs_tf1"]["median"], f"{targets['mlp_vs_tf1'].what} {INTERLEAVED}"))
        rows.append(targets["first_epoch"].row(
            interleaved["first_vs_steady"]["median"],
            f"MLP {targets['first_epoch'].what} {INTERLEAVED}"))
    rows += [targets["first_epoch"].row(figures["first_epoch"]["vs_steady"],
                                        f"{name.upper()} {targets['first_epoch'].what}")
             for name, figures in models.items() if name != "mlp"]
    pipeline = targets["pipeline"]
    if interleaved["rounds"] and results["pipeline"]["fastest_model"] == "mlp":
        rows.append(pipeline.row(interleaved["pipeline_vs_mlp"]["median"],
                                 f"{pipeline.what}, the MLP {INTERLEAVED}"))
    else:
        rows.append(pipeline.row(results["pipeline"]["vs_fastest_model"]))
    return rows
