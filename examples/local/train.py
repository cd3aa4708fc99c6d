"""A tiny training loop that follows the checkpoint contract, with nothing but the standard library.

It resumes from CHECKPOINT_INPUT_PATH when the job has an input, and writes a checkpoint
directory `step-N/` into CHECKPOINT_OUTPUT_DIR every SAVE_EVERY steps (weights as a real
safetensors file, optimizer state, trainer_state.json). Each directory is written under a
`.tmp` name and renamed when complete, so a crash never leaves a half checkpoint that looks
finished: the operator skips names with tmp markers.
"""

import json
import os
import random
import struct
from pathlib import Path

SIZE = 1024  # parameters


def save_safetensors(path: Path, name: str, values: list[float]) -> None:
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps({name: {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def load_safetensors(path: Path, name: str) -> list[float]:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8:8 + header_len])[name]["data_offsets"]
    body = raw[8 + header_len:]
    return list(struct.unpack(f"<{(end - start) // 4}f", body[start:end]))


def main() -> None:
    output = Path(os.environ["CHECKPOINT_OUTPUT_DIR"])
    source = os.environ.get("CHECKPOINT_INPUT_PATH")
    steps, every = int(os.environ.get("STEPS", "300")), int(os.environ.get("SAVE_EVERY", "100"))

    step, weights, momentum = 0, [0.0] * SIZE, [0.0] * SIZE
    if source:
        state = json.loads((Path(source) / "trainer_state.json").read_text())
        step = state["global_step"]
        weights = load_safetensors(Path(source) / "model.safetensors", "weights")
        momentum = load_safetensors(Path(source) / "optimizer.bin", "momentum")
        print(f"resuming from {source} at step {step}")

    rng = random.Random(step)
    for _ in range(steps):
        step += 1
        for i in range(SIZE):
            momentum[i] = 0.9 * momentum[i] + rng.uniform(-1, 1)
            weights[i] -= 0.001 * momentum[i]
        if step % every == 0:
            partial = output / f"step-{step}.tmp"
            partial.mkdir(parents=True, exist_ok=True)
            save_safetensors(partial / "model.safetensors", "weights", weights)
            save_safetensors(partial / "optimizer.bin", "momentum", momentum)
            (partial / "trainer_state.json").write_text(json.dumps({"global_step": step}))
            partial.rename(output / f"step-{step}")
            print(f"saved {output / f'step-{step}'}")


if __name__ == "__main__":
    main()
