"""nos.train.tasks: every task loads, trains a step and is deterministic; caches; CIFAR-10
readers."""

from __future__ import annotations

import codecs
import math
import os
import pickle

import numpy as np
import pytest
import torch

from nos.train.tasks import Task, TaskData, default_device, get_task, task_names
from nos.train.tasks import mnist1d as mnist1d_module
from nos.train.tasks.charlm import UNKNOWN, stdlib_corpus
from nos.train.tasks.cifar10 import (
    UnsafePickleError,
    find_batches,
    read_cifar10,
    read_python_batch,
)

CIFAR_BATCH = 20  # images per generated CIFAR-10 batch


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nos-cache")


@pytest.fixture(autouse=True)
def _cache_dir(cache, monkeypatch):
    monkeypatch.setenv("NOS_CACHE_DIR", str(cache))


def _tiny_cifar(seed: int, batches: int) -> list[tuple[np.ndarray, list[int]]]:
    """``batches`` training batches and a test batch (last) of random images and labels."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (CIFAR_BATCH, 3072), dtype=np.uint8),
             rng.integers(0, 10, CIFAR_BATCH).tolist()) for _ in range(batches + 1)]


def _names(batches: int) -> list[str]:
    return [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"]


def write_binary(folder, content) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in zip(_names(len(content) - 1), content, strict=True):
        records = np.concatenate([np.array(labels, np.uint8)[:, None], images], axis=1)
        records.tofile(folder / f"{name}.bin")


def write_python(folder, content) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in zip(_names(len(content) - 1), content, strict=True):
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": images,
                 b"filenames": [f"img{i}.png".encode() for i in range(len(labels))]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)


@pytest.fixture(scope="session")
def cifar_dirs(tmp_path_factory):
    """The same tiny CIFAR-10 (two training batches) in both formats."""
    content = _tiny_cifar(seed=0, batches=2)
    binary, python = tmp_path_factory.mktemp("cifar-bin"), tmp_path_factory.mktemp("cifar-py")
    write_binary(binary / "cifar-10-batches-bin", content)
    write_python(python, content)
    return binary, python, content


# name -> options, (train, val, test) sizes, input shape, input dtype
CASES = {
    "mnist1d": ({}, (3200, 800, 1000), (1, 40), torch.float32),
    "digits": ({}, (1150, 288, 359), (1, 8, 8), torch.float32),
    "cifar10": ({"data_dir": None}, (36, 4, 20), (3, 32, 32), torch.float32),
    "charlm": ({}, (2499, 312, 312), (64,), torch.int64),
}


def _task(name: str, cifar_dirs) -> Task:
    options = dict(CASES[name][0])
    if name == "cifar10":
        options["data_dir"] = str(cifar_dirs[0])
    return get_task(name, **options)


def test_every_task_has_a_case():
    assert sorted(task_names()) == sorted(CASES)
    assert task_names()[0] == "mnist1d"


@pytest.mark.parametrize("name", list(CASES))
def test_task_loads_with_documented_shapes_and_trains_a_step(name, cifar_dirs):
    task = _task(name, cifar_dirs)
    _, sizes, shape, dtype = CASES[name]
    data = task.load()
    splits = [(data.train_x, data.train_y), (data.val_x, data.val_y), (data.test_x, data.test_y)]
    for (x, y), size in zip(splits, sizes, strict=True):
        assert len(x) == len(y) == size
        assert tuple(x.shape[1:]) == shape and x.dtype == dtype and y.dtype == torch.int64
        assert x.device.type == "cpu"
    assert task.batch_size > 0 and task.epochs > 0
    assert task.name in task.describe() and "parameters" in task.describe()

    torch.manual_seed(0)
    model = task.build_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.train_x[:16], data.train_y[:16]
    output = model(x)
    assert output.shape == (*y.shape, output.shape[-1]) and output.shape[-1] >= 10
    loss = task.loss(output, y)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    after = task.loss(model(x), y)
    assert math.isfinite(after.item())
    correct = task.correct(output, y)
    assert correct.dim() == 0 and 0 <= correct.item() <= task.count(y) == y.numel()


@pytest.mark.parametrize("name", list(CASES))
def test_loading_and_building_are_deterministic(name, cifar_dirs):
    task = _task(name, cifar_dirs)
    assert task.load("cpu") is task.load(torch.device("cpu"))  # the per-process cache
    first, second = task.make_data(), task.make_data()  # built twice, bypassing that cache
    for a, b in zip(_tensors(first), _tensors(second), strict=True):
        assert torch.equal(a, b)
    weights = []
    for _ in range(2):
        torch.manual_seed(5)
        weights.append(list(task.build_model().state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def _tensors(data: TaskData) -> list[torch.Tensor]:
    return [data.train_x, data.train_y, data.val_x, data.val_y, data.test_x, data.test_y]


def _rows(*arrays) -> list[bytes]:
    return sorted(row.tobytes() for array in arrays for row in np.asarray(array))


def test_mnist1d_splits_partition_the_generated_data():
    data = get_task("mnist1d").load()
    fresh = mnist1d_module.generate(mnist1d_module.generation_args())
    as_rows = {k: fresh[k].astype(np.float32) for k in ("x", "x_test")}
    train_val = np.concatenate([data.train_x.squeeze(1).numpy(), data.val_x.squeeze(1).numpy()])
    assert _rows(train_val) == _rows(as_rows["x"])
    assert len(set(_rows(data.train_x)) & set(_rows(data.val_x))) == 0
    assert np.array_equal(data.test_x.squeeze(1).numpy(), as_rows["x_test"])


def test_digits_splits_partition_the_dataset():
    from sklearn.datasets import load_digits

    data = get_task("digits").load()
    images = (load_digits().data / 16.0).astype(np.float32)
    together = torch.cat([data.train_x, data.val_x, data.test_x]).reshape(-1, 64).numpy()
    assert _rows(together) == _rows(images)
    assert 0 <= together.min() and together.max() <= 1


def test_mnist1d_disk_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("NOS_CACHE_DIR", str(tmp_path))
    numpy_state = np.random.get_state()[1].copy()
    data = get_task("mnist1d", num_samples=200, seed=7).load()
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # global RNG left alone
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("mnist1d-") and files[0].endswith(".npz")
    cached_file = tmp_path / files[0]
    stamp = cached_file.stat().st_mtime_ns

    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    args = mnist1d_module.generation_args(seed=7, num_samples=200)
    fresh = make_dataset(ObjectView(dict(args)))

    def must_not_generate(_args):
        raise AssertionError("generated again although the cache file exists")

    monkeypatch.setattr(mnist1d_module, "generate", must_not_generate)
    cached = mnist1d_module.load_arrays(args)
    for key in ("x", "y", "x_test", "y_test"):
        assert np.array_equal(cached[key], fresh[key])
    assert cached_file.stat().st_mtime_ns == stamp
    assert len(data.train_x) + len(data.val_x) == 160 and len(data.test_x) == 40

    other = mnist1d_module.cache_path(mnist1d_module.generation_args(seed=8, num_samples=200),
                                      tmp_path)
    assert other != cached_file  # keyed by the generation arguments


def test_damaged_mnist1d_cache_is_rebuilt(tmp_path):
    args = mnist1d_module.generation_args(seed=1, num_samples=100)
    path = mnist1d_module.cache_path(args, tmp_path)
    path.write_bytes(b"not a zip file")
    arrays = mnist1d_module.load_arrays(args, tmp_path)
    assert arrays["x"].shape == (80, 40)
    assert np.array_equal(np.load(path, allow_pickle=False)["x"], arrays["x"])


def test_cifar10_formats_read_the_same_pixels_and_labels(cifar_dirs):
    binary, python, content = cifar_dirs
    assert find_batches(binary)[0] == "binary" and find_batches(python)[0] == "python"
    from_binary, from_python = read_cifar10(binary), read_cifar10(python)
    for a, b in zip(from_binary, from_python, strict=True):
        assert np.array_equal(a, b)
    train_x, train_y, test_x, test_y = from_binary
    assert train_x.shape == (40, 3, 32, 32) and train_x.dtype == np.uint8
    assert train_y.tolist() == content[0][1] + content[1][1]
    assert test_y.tolist() == content[2][1]
    # records are channel-major: 1024 red, then 1024 green, then 1024 blue, row by row
    assert train_x[21, 1, 2, 3] == content[1][0][1, 1024 + 2 * 32 + 3]

    a = get_task("cifar10", data_dir=str(binary)).load()
    b = get_task("cifar10", data_dir=python).load()
    for x, y in zip(_tensors(a), _tensors(b), strict=True):
        assert torch.equal(x, y)
    means, stds = a.train_x.mean(dim=(0, 2, 3)), a.train_x.std(dim=(0, 2, 3))
    assert torch.allclose(means, torch.zeros(3), atol=1e-5)
    assert torch.allclose(stds, torch.ones(3), atol=1e-4)


def test_cifar10_limit_and_any_number_of_batches(tmp_path):
    write_python(tmp_path / "cifar-10-batches-py", _tiny_cifar(seed=1, batches=1))
    data = get_task("cifar10", data_dir=str(tmp_path), limit=10, val_fraction=0.2).load()
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (8, 2, 20)


class _Payload:
    """Any class outside plain data; unpickling it must be refused."""


class _RunsCommand:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Rot13:
    def __reduce__(self):
        return codecs.encode, ("hidden", "rot13")


@pytest.mark.parametrize("payload,refused", [
    ("command", "system"), (_Payload(), "_Payload"), (_Rot13(), "rot13"),
])
def test_python_batch_with_more_than_plain_data_is_refused(tmp_path, payload, refused):
    marker = tmp_path / "executed"
    if payload == "command":
        payload = _RunsCommand(marker)
    content = _tiny_cifar(seed=2, batches=1)
    write_python(tmp_path, content)
    batch = {b"data": content[0][0], b"labels": content[0][1], b"extra": payload}
    with open(tmp_path / "data_batch_1", "wb") as handle:
        pickle.dump(batch, handle, protocol=2)
    with pytest.raises(UnsafePickleError, match=refused) as error:
        read_python_batch(tmp_path / "data_batch_1")
    assert "data_batch_1" in str(error.value)
    with pytest.raises(UnsafePickleError, match=refused):
        get_task("cifar10", data_dir=str(tmp_path)).load()
    assert not marker.exists()


def test_python_batch_with_wrong_contents_is_a_value_error(tmp_path):
    with open(tmp_path / "batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}, handle, protocol=2)
    with pytest.raises(ValueError, match=r"shape \(N, 3072\)"):
        read_python_batch(tmp_path / "batch")
    (tmp_path / "junk").write_bytes(b"\x00 not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        read_python_batch(tmp_path / "junk")


def test_directory_without_cifar_files_is_a_clear_error(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"")  # a training batch but no test batch
    with pytest.raises(ValueError, match=f"no CIFAR-10 files in {tmp_path}"):
        get_task("cifar10", data_dir=str(tmp_path)).load()
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"{missing} does not exist"):
        get_task("cifar10", data_dir=str(missing)).load()


def test_truncated_binary_batch_is_a_clear_error(tmp_path):
    write_binary(tmp_path, _tiny_cifar(seed=3, batches=1))
    with open(tmp_path / "test_batch.bin", "ab") as handle:
        handle.write(b"\x01\x02")
    with pytest.raises(ValueError, match="test_batch.bin.*3073-byte"):
        read_cifar10(tmp_path)


def test_charlm_default_corpus_is_fixed_and_sequences_are_shifted():
    corpus = stdlib_corpus()
    assert len(corpus) == 200_000 and corpus == stdlib_corpus()
    data = get_task("charlm").load()
    assert torch.equal(data.train_x[:, 1:], data.train_y[:, :-1])
    assert torch.equal(data.train_y[:-1, -1], data.train_x[1:, 0])  # contiguous sequences
    assert int(data.train_x.min()) >= 1  # every training character is in the vocabulary


def test_charlm_text_file_and_unknown_characters(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("ab" * 400 + "z" * 100 + "ab" * 50, encoding="utf-8")  # 80/10/10 at 900/1000
    task = get_task("charlm", path=text, seq_len=16)
    data = task.load()
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (49, 6, 6)
    assert (data.val_x == UNKNOWN).all() and (data.test_x != UNKNOWN).all()
    torch.manual_seed(0)
    output = task.build_model()(data.val_x)
    assert output.shape == (6, 16, 3)  # 'a', 'b' and the unknown index
    assert task.count(data.val_y) == 6 * 16
    with pytest.raises(ValueError, match="too few for seq_len 400"):
        get_task("charlm", path=text, seq_len=400).load()
    with pytest.raises(ValueError, match="missing.txt does not exist"):
        get_task("charlm", path=tmp_path / "missing.txt").load()


def test_unknown_task_and_option_are_named():
    with pytest.raises(ValueError, match="unknown task 'mnist2d'.*mnist1d, digits"):
        get_task("mnist2d")
    with pytest.raises(ValueError, match="unknown option 'data_dri'.*data_dir"):
        get_task("cifar10", data_dri="/tmp")
    with pytest.raises(ValueError, match="val_fraction.*1.5"):
        get_task("digits", val_fraction=1.5)
    with pytest.raises(ValueError, match="seq_len.*0"):
        get_task("charlm", seq_len=0)


def test_default_device_and_moving_data():
    device = default_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    data = get_task("digits").load(device)
    assert data.train_x.device.type == device.type
