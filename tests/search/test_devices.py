"""A worker's device, a local search's GPUs and a lost CUDA context, as pure functions
(no GPU here: these are what decides where a child trains on one)."""

from __future__ import annotations

import pytest
import torch

from nos.search import config as cfg
from nos.search.devices import DeviceError, local_gpus, poisoned, worker_device
from nos.search.driver import Search


@pytest.mark.parametrize("num_gpus, ids, visible, expected", [
    (0, [], None, "cpu"),
    (0, [0, 1], "0,1", "cpu"),           # a CPU worker on a GPU machine stays on the CPU
    (1, [0], "0", "cuda:0"),
    (1, [3], "3", "cuda:0"),             # Ray shows the worker only its GPU
    (0.25, [2], "2", "cuda:0"),          # a fractional share: the GPU it shares
    (2, [1, 3], "1,3", "cuda:0"),        # two GPUs: the first, as torch numbers them
    (1, [3], "1,3", "cuda:1"),           # visible devices listed by Ray in another order
    (1, [2], None, "cuda:2"),            # Ray told not to set CUDA_VISIBLE_DEVICES
    (0.5, ["1"], "", "cuda:1"),
])
def test_a_workers_device_is_its_assigned_gpu_or_the_cpu(num_gpus, ids, visible, expected):
    assert worker_device(num_gpus, ids, visible) == torch.device(expected)


@pytest.mark.parametrize("num_gpus, ids, visible, message", [
    (1, [], "0", "Ray assigned none"),
    (1, [4], "0,1", "not among the visible devices"),
    (1, ["GPU-5e1f"], None, "not an index"),
])
def test_a_device_that_cannot_be_known_is_refused(num_gpus, ids, visible, message):
    with pytest.raises(DeviceError, match=message):
        worker_device(num_gpus, ids, visible)


def test_a_local_search_has_the_machines_gpus():
    assert local_gpus(0, available=0) == 0
    assert local_gpus(0, available=2) == 2  # declared to Ray, unused by CPU workers
    assert local_gpus(0.25, available=1) == 1
    assert local_gpus(1, available=4) == 4
    with pytest.raises(DeviceError, match="this machine has no GPU"):
        local_gpus(0.5, available=0)
    with pytest.raises(DeviceError, match="has 1 GPU"):
        local_gpus(2, available=1)
    assert local_gpus(0) == torch.cuda.device_count()


def test_a_search_asking_for_a_gpu_here_is_refused_before_anything_is_written(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = cfg.validate({"workers": {"num_gpus": 0.25}}, "test")
    with pytest.raises(DeviceError, match="no GPU"):
        Search(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("error, lost", [
    ("CUDA error: an illegal memory access was encountered", True),
    ("RuntimeError: CUDA error: device-side assert triggered", True),
    ("CUDA error: unspecified launch failure", True),
    ("CUBLAS_STATUS_NOT_INITIALIZED when calling cublasCreate(handle)", True),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", False),  # the child's fault, not the
    ("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x2)", False),  # worker's
    ("", False),
    (None, False),
])
def test_a_lost_cuda_context_is_told_from_a_childs_error(error, lost):
    assert poisoned(error) is lost
