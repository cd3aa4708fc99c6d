"""Stands in for fine-tuning a catalog model: reads the model's config from CHECKPOINT_INPUT_PATH (the
ClusterCheckpoint, read-only) and writes `step-1/` into CHECKPOINT_OUTPUT_DIR with the config and a
note of which files it started from. Standard library only."""

import hashlib
import json
import os
from pathlib import Path

source = Path(os.environ["CHECKPOINT_INPUT_PATH"])
output = Path(os.environ["CHECKPOINT_OUTPUT_DIR"]) / "step-1"
config = json.loads((source / "config.json").read_text())
started_from = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(source.iterdir()) if p.is_file()}
output.mkdir(parents=True, exist_ok=True)
(output / "config.json").write_text(json.dumps(config, indent=2))
(output / "started_from.json").write_text(json.dumps(started_from, indent=2))
print(f"fine-tuned {config.get('model_type')} from {len(started_from)} files of {source}")
