"""Windows per forward pass and threads: measured once per device and model shape, cached, overridable."""

from __future__ import annotations

import json

import torch

from hermesseg.inference.execution import BATCHES, DEFAULT_BATCH, choose_execution
from hermesseg.network import HermesR, HermesRConfig


def test_calibration_is_measured_once_cached_and_overridden(tmp_path, monkeypatch):
    monkeypatch.setenv("HERMESSEG_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = HermesR(HermesRConfig(base_channels=4, head_dim=8, num_task_rows=4, num_modalities=2)).eval()
    threads = torch.get_num_threads()
    first = choose_execution(net, (32, 32, 32), torch.device("cpu"))
    assert torch.get_num_threads() == threads  # calibration leaves the process as it found it
    assert first.source == "calibrated"  # a small network is always timed, however loaded the machine
    assert first.batch_size in BATCHES and 1 <= first.threads <= threads
    cached = list((tmp_path / "calibration").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["batch_size"] == first.batch_size
    again = choose_execution(net, (32, 32, 32), torch.device("cpu"))
    assert (again.batch_size, again.threads, again.source) == (first.batch_size, first.threads, "cached")
    assert choose_execution(net, (32, 32, 32), torch.device("cpu"), batch_size=3).batch_size == 3
    # Another window size is another shape to measure.
    choose_execution(net, (32, 32, 48), torch.device("cpu"))
    assert len(list((tmp_path / "calibration").glob("*.json"))) == 2
    cached[0].write_text("{not json")  # a damaged cache entry is measured again, not trusted
    assert choose_execution(net, (32, 32, 32), torch.device("cpu")).source == "calibrated"


def test_a_network_too_large_to_time_gets_the_defaults_without_a_forward_pass(tmp_path, monkeypatch):
    """Full-size Hermes-R's 128^3 windows (32 channels) take about 10 s each on 2 cores: not timed, defaults cached."""
    monkeypatch.setenv("HERMESSEG_CACHE", str(tmp_path))
    net = HermesR(HermesRConfig(base_channels=32, num_task_rows=4, num_modalities=2)).eval()
    calls = []
    net.register_forward_pre_hook(lambda module, args: calls.append(1))
    plan = choose_execution(net, (128, 128, 128), torch.device("cpu"))
    assert (plan.source, plan.batch_size, calls) == ("default", DEFAULT_BATCH["cpu"], [])
    assert choose_execution(net, (128, 128, 128), torch.device("cpu")).source == "cached"
