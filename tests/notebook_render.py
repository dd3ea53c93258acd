"""notebooks/render.py, loaded as the module `render` for the tests of the notebooks, their
editions and the numbers they show: it writes the renderings and the run times, and knows the
editions and what a rendering records. It is a script beside the notebooks, not a module of the
package, so it is loaded from its file."""

import importlib.util
import os

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "notebooks")


def _load():
    spec = importlib.util.spec_from_file_location("render", os.path.join(NOTEBOOK_DIR, "render.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load()
