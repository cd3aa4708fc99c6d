"""Lightning `.ckpt`, Keras `.keras`, GGUF: their real writers and readers."""

from __future__ import annotations

import numpy as np
import torch

from checkpoint_operator.agent.file_checks import GGML_TYPE_SIZES
from frameworks_support import agent_scan, materialize, summary


def test_lightning_checkpoint_step_and_optimizer_state_from_its_pickle(tmp_path):
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4)), batch_size=4)
    out = tmp_path / "out"
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=str(out), save_last=False)])
    trainer.fit(Tiny(), data)
    (written,) = [p.name for p in out.iterdir()]
    assert written == "epoch=0-step=4.ckpt"
    (out / "last-model.ckpt").write_bytes((out / written).read_bytes())  # no step in the name: from the pickle

    found = agent_scan(out, "--layout", "files")
    assert summary(found[written]) == ("lightning", 4, True, True)
    assert summary(found["last-model.ckpt"]) == ("lightning", 4, True, True)
    mounted = materialize(found[written], out, tmp_path / "input" / "c")
    resumed = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    resumed.fit(Tiny(), data, ckpt_path=str(mounted / written))
    assert resumed.global_step == 6


def test_keras_archive_compiled_with_an_optimizer(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4)), np.zeros((8, 2)), epochs=1, verbose=0)
    out = tmp_path / "out"
    out.mkdir()
    model.save(out / "model-step-8.keras")
    data = (out / "model-step-8.keras").read_bytes()
    (out / "cut.keras").write_bytes(data[: len(data) // 2])

    found = agent_scan(out, "--layout", "files")
    assert summary(found["model-step-8.keras"]) == ("keras", 8, True, True)
    assert found["cut.keras"]["complete"] is False
    mounted = materialize(found["model-step-8.keras"], out, tmp_path / "input" / "k")
    loaded = keras.models.load_model(mounted / "model-step-8.keras")
    assert np.allclose(loaded.predict(np.ones((1, 4)), verbose=0), model.predict(np.ones((1, 4)), verbose=0))


def test_gguf_header_and_tensor_data(tmp_path):
    import gguf

    out = tmp_path / "out"
    out.mkdir()
    writer = gguf.GGUFWriter(str(out / "tiny-step-3.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_tensor("w", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.add_tensor("h", np.ones((4, 4), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = (out / "tiny-step-3.gguf").read_bytes()
    (out / "cut.gguf").write_bytes(data[:-64])

    found = agent_scan(out, "--layout", "files")
    assert summary(found["tiny-step-3.gguf"]) == ("gguf", 3, False, True)
    assert found["cut.gguf"]["complete"] is False and "cut short" in found["cut.gguf"]["completeReason"]
    reader = gguf.GGUFReader(str(materialize(found["tiny-step-3.gguf"], out, tmp_path / "in") / "tiny-step-3.gguf"))
    assert sorted(t.name for t in reader.tensors) == ["h", "w"]


def test_ggml_type_sizes_agree_with_gguf_py():
    import gguf

    theirs = {int(k): tuple(v) for k, v in gguf.GGML_QUANT_SIZES.items()}
    assert {k: v for k, v in GGML_TYPE_SIZES.items() if k in theirs} == {k: v for k, v in theirs.items()
                                                                           if k in GGML_TYPE_SIZES}
    assert set(theirs) - set(GGML_TYPE_SIZES) == set()
