"""The checkpoint file: plain tensors that torch.load(weights_only=True) reads, and anything
else refused in one line, by the library and by the evaluation."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

import nos
from nos.learned import CoordinateLSTM, load_checkpoint, save_checkpoint
from nos.learned.checkpoint import FORMAT, VERSION


def _payload() -> dict:
    torch.manual_seed(0)
    net = CoordinateLSTM()
    return {"format": FORMAT, "version": VERSION, "architecture": net.architecture.to_dict(),
            "network": net.state_dict(), "training": {"task": "mnist1d"}}


def _write(path, payload) -> str:
    torch.save(payload, path)
    return str(path)


def _bytes(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _zip(path) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a torch file")
    return str(path)


def _without(key: str) -> dict:
    payload = _payload()
    del payload[key]
    return payload


def _with_weight(name: str, value: torch.Tensor) -> dict:
    payload = _payload()
    payload["network"][name] = value
    return payload


def test_a_saved_checkpoint_is_plain_tensors_and_values(tmp_path):
    torch.manual_seed(1)
    net = CoordinateLSTM()
    path = tmp_path / "lstm.pt"
    save_checkpoint(path, net, {"task": "mnist1d", "seed": 1, "meta_steps": 300})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == VERSION
    assert raw["training"] == {"task": "mnist1d", "seed": 1, "meta_steps": 300}
    assert raw["architecture"] == {"hidden_size": 20, "layers": 2, "preprocess_p": 10.0,
                                   "output_scale": 0.1}
    loaded, _ = load_checkpoint(path)
    for name, tensor in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert os.listdir(tmp_path) == ["lstm.pt"]  # no temporary file left behind


BAD = {
    "random bytes": (lambda p: _bytes(p, os.urandom(2048)), "it is not a torch file"),
    "empty file": (lambda p: _bytes(p, b""), "it is not a torch file"),
    "a zip of something else": (lambda p: _zip(p), "cannot read it"),
    "a module pickled whole": (lambda p: _write(p, torch.nn.Linear(2, 2)),
                               "it holds a torch.nn.modules.linear.Linear, not only plain"),
    "a plain tensor": (lambda p: _write(p, torch.zeros(3)), "another kind"),
    "a model's state_dict": (lambda p: _write(p, torch.nn.Linear(2, 2).state_dict()),
                             "another kind"),
    "a newer version": (lambda p: _write(p, {**_payload(), "version": 99}), "version 99"),
    "no network": (lambda p: _write(p, _without("network")), "lacks 'network'"),
    "no training record": (lambda p: _write(p, _without("training")), "lacks 'training'"),
    "a missing weight": (lambda p: _write(p, {**_payload(), "network": {}}), "lacks weight"),
    "a weight of the wrong shape": (
        lambda p: _write(p, _with_weight("head.weight", torch.zeros(2, 20))),
        "'head.weight' has shape (2, 20), expected (1, 20)"),
    "a NaN weight": (lambda p: _write(p, _with_weight("head.bias", torch.tensor([float("nan")]))),
                     "NaN or infinite"),
    "a bad architecture": (
        lambda p: _write(p, {**_payload(), "architecture": {**_payload()["architecture"],
                                                            "hidden_size": 0}}),
        "hidden_size must be"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_corrupted_or_foreign_file_is_refused_in_one_line(tmp_path, case):
    make, message = BAD[case]
    path = make(tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert message in text and path in text
    assert "\n" not in text and len(text) < 300
    with pytest.raises(ValueError, match="bad.pt"):
        nos.Optimizer([torch.nn.Parameter(torch.zeros(2))], path)


def test_a_missing_file_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        nos.Optimizer([torch.nn.Parameter(torch.zeros(2))], str(tmp_path / "none.pt"))


def test_evaluate_marks_a_bad_checkpoint_invalid_and_trains_with_a_good_one(tmp_path):
    from tests.learned.tiny_task import Blobs

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    result = nos.evaluate(str(bad), Blobs(), epochs=1, lr=1.0)
    assert result.status == "invalid" and "bad.pt" in result.error
    good = str(tmp_path / "good.pt")
    save_checkpoint(good, CoordinateLSTM(), {})
    result = nos.evaluate(good, Blobs(), epochs=1, lr_grid=[0.5, 1.0], grid_epochs=0.5)
    assert result.status == "ok" and result.rule == good and result.lr in (0.5, 1.0)
    assert nos.evaluate(good, Blobs(), epochs=1, lr=1.0, params={"beta1": 0.9}).status == \
        "invalid"
