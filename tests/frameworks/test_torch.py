"""torch: DCP of get_state_dict(model, optimizer), a plain torch.save dict, safetensors files."""

from __future__ import annotations

import warnings

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from frameworks_support import agent_scan, materialize, summary


def _trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def _dcp_save(state, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled...": one process, by design
        dcp.save(state, checkpoint_id=str(path))


def test_dcp_of_model_and_optimizer_is_resumable_complete_and_loads(tmp_path):
    model, optimizer = _trained()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    out = tmp_path / "out"
    _dcp_save({"model": model_sd, "optim": optim_sd}, out / "step-3")
    _dcp_save({"model": get_state_dict(model, optimizer)[0]}, out / "weights-only")

    found = agent_scan(out)
    assert summary(found["step-3"]) == ("torch-dcp", 3, True, True)
    assert found["step-3"]["completeReason"].startswith(".metadata (written last) and the 1 data file")
    assert summary(found["weights-only"]) == ("torch-dcp", None, False, True)

    mounted = materialize(found["step-3"], out / "step-3", tmp_path / "input" / "ckpt")
    fresh_model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    fresh_opt = torch.optim.AdamW(fresh_model.parameters(), lr=1e-2)
    fresh_model_sd, fresh_optim_sd = get_state_dict(fresh_model, fresh_opt)
    state = {"model": fresh_model_sd, "optim": fresh_optim_sd}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(mounted))
    set_state_dict(fresh_model, fresh_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])


def test_dcp_without_its_metadata_is_incomplete(tmp_path):
    model, optimizer = _trained()
    _dcp_save({"model": get_state_dict(model, optimizer)[0]}, tmp_path / "out" / "step-1")
    (tmp_path / "out" / "step-1" / ".metadata").unlink()  # as if killed before DCP renamed it into place
    m = agent_scan(tmp_path / "out")["step-1"]
    assert (m["format"], m["complete"]) == ("torch-dcp", False)
    assert m["completeReason"] == "no .metadata beside the .distcp files (torch DCP writes it last)"


def test_plain_torch_save_dict_is_resumable_with_its_step_from_the_pickle(tmp_path):
    model, optimizer = _trained()
    out = tmp_path / "out"
    out.mkdir()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 100}, out / "ckpt.pt")
    torch.save({"model": model.state_dict()}, out / "weights.pt")
    data = (out / "ckpt.pt").read_bytes()
    (out / "cut.pt").write_bytes(data[: len(data) - 100])

    found = agent_scan(out, "--layout", "files")
    assert summary(found["ckpt.pt"]) == ("torch", 100, True, True)
    assert summary(found["weights.pt"]) == ("torch", None, False, True)
    cut = found["cut.pt"]
    assert (cut["complete"], cut["completeReason"]) == (
        False, "cut.pt: no end-of-central-directory record at the end (cut short, or not a zip)")

    mounted = materialize(found["ckpt.pt"], out, tmp_path / "input" / "ckpt")
    loaded = torch.load(mounted / "ckpt.pt", weights_only=True)
    assert loaded["step"] == 100 and torch.equal(loaded["model"]["0.weight"], model.state_dict()["0.weight"])


def test_plain_torch_save_in_a_step_directory(tmp_path):
    model, optimizer = _trained()
    (tmp_path / "out" / "step-7").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, tmp_path / "out" / "step-7" / "s.pt")
    assert summary(agent_scan(tmp_path / "out")["step-7"]) == ("torch", 7, True, True)


def test_safetensors_header_and_size_decide_completeness(tmp_path):
    model, _ = _trained()
    out = tmp_path / "out"
    out.mkdir()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, out / "model-step-50.safetensors")
    data = (out / "model-step-50.safetensors").read_bytes()
    (out / "truncated.safetensors").write_bytes(data[:-16])

    found = agent_scan(out, "--layout", "files")
    assert summary(found["model-step-50.safetensors"]) == ("safetensors", 50, False, True)
    cut = found["truncated.safetensors"]
    assert cut["complete"] is False and cut["completeReason"].endswith("(cut short)")
    mounted = materialize(found["model-step-50.safetensors"], out, tmp_path / "input" / "m")
    assert torch.equal(load_file(mounted / "model-step-50.safetensors")["0.weight"], tensors["0.weight"])
