"""One torch thread for these tests: the LSTM's many small operations gain nothing from a
second thread, and lose much when the machine's cores are busy (threads wait on each other)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
