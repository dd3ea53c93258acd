"""A model's layer diagram names every layer, its output shape and its parameters."""

import pytest

from keras_tutorial import diagrams, models


@pytest.mark.parametrize("name", models.MODELS)
def test_the_diagram_lists_every_layer_with_its_shape_and_parameters(name, tmp_path):
    model = models.build(name)
    rows = diagrams.layer_rows(model)
    assert [kind for kind, *_ in rows] == [type(layer).__name__ for layer in model.layers]
    assert sum(params for *_, params in rows) == model.count_params()
    assert rows[-1][2] == "(None, 10)"  # The logits of a batch.
    figure = diagrams.layer_diagram(model)
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert all(any(layer.name in text for text in texts) for layer in model.layers)
    assert f"{model.count_params():,} parameters in all" in texts
    figure.savefig(tmp_path / "diagram.png")
    assert (tmp_path / "diagram.png").stat().st_size > 1000
