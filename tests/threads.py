"""A module fixture that keeps torch to one thread: the test machine's 2 cores are shared, and the comparisons of
these tests run in the test process."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
