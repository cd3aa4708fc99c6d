"""A tiny training loop that follows the checkpoint contract, with nothing but the standard library.

It resumes from CHECKPOINT_RESUME_PATH when that exists (a retried pod of a job with
`publish: Continuous`: the latest checkpoint this job sealed), else from CHECKPOINT_INPUT_PATH
when the job has an input, and writes a checkpoint directory `step-N/` into
CHECKPOINT_OUTPUT_DIR every SAVE_EVERY steps (weights as a real safetensors file, optimizer
state, trainer_state.json, and metrics.json with the loss, which `retention.keepBest` can rank
by). Each directory is written under a `.tmp` name and renamed when complete, so a crash never
leaves a half checkpoint that looks finished: the operator skips names with tmp markers, and the
rename is what tells the live-sealing sidecar that it is complete. SECONDS_PER_SAVE makes each
save interval take that long (a stand-in for real training time).
"""

import json
import os
import random
import struct
import time
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
    output = Path(os.environ["CHECKPOINT_OUTPUT_DIR"]) if os.environ.get("CHECKPOINT_OUTPUT_DIR") else None
    resume = os.environ.get("CHECKPOINT_RESUME_PATH")
    source = resume if resume and os.path.exists(resume) else os.environ.get("CHECKPOINT_INPUT_PATH")
    steps, every = int(os.environ.get("STEPS", "300")), int(os.environ.get("SAVE_EVERY", "100"))
    pause = float(os.environ.get("SECONDS_PER_SAVE", "0"))

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
        if output is not None and step % every == 0:
            time.sleep(pause)
            partial = output / f"step-{step}.tmp"
            partial.mkdir(parents=True, exist_ok=True)
            save_safetensors(partial / "model.safetensors", "weights", weights)
            save_safetensors(partial / "optimizer.bin", "momentum", momentum)
            (partial / "trainer_state.json").write_text(json.dumps({"global_step": step}))
            loss = sum(abs(w) for w in weights) / SIZE + abs(rng.gauss(0, 0.02))
            (partial / "metrics.json").write_text(json.dumps({"loss": round(loss, 6)}))
            partial.rename(output / f"step-{step}")
            print(f"saved {output / f'step-{step}'}")


if __name__ == "__main__":
    main()
