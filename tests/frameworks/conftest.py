"""The compatibility tier: each framework's real writer and reader, through `agent scan`.

Not part of the default `python -m pytest`: collected only with `-m frameworks` (pyproject.toml
deselects the marker by default), as `.ci/run` runs it after `pip install -e '.[frameworks]'`.
Without the packages nothing here is collected, and the run says so in its summary.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REQUIRED = ("torch", "transformers", "accelerate", "safetensors", "jax", "orbax.checkpoint", "optax",
            "pytorch_lightning", "keras", "gguf")
MISSING = [m for m in REQUIRED if importlib.util.find_spec(m.split(".")[0]) is None]


def _asked_for(config) -> bool:
    return config.option.markexpr == "frameworks"


def pytest_ignore_collect(collection_path, config):
    # Not even imported unless asked for: importing the frameworks costs the default suite ~20 s.
    if collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return bool(MISSING) or not _asked_for(config)
    return None

# Everything offline: no Hub, no telemetry. Only when this tier runs: this conftest is loaded by
# every run, and the import-source tests talk to a local Hub that HF_HUB_OFFLINE would refuse.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "KERAS_BACKEND": "torch",
           "JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false"}


def pytest_configure(config):
    if _asked_for(config):
        for key, value in OFFLINE.items():
            os.environ.setdefault(key, value)


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.frameworks)


def pytest_terminal_summary(terminalreporter, config):
    if MISSING and _asked_for(config):
        terminalreporter.write_line(
            f"frameworks tier did NOT run: missing {', '.join(MISSING)} "
            "(install with pip install -e '.[frameworks]')")
