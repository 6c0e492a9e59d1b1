"""Feature replay (add-task --mode adapter, ``hermesseg.training.feature_replay``) on the shipped default model and
a real cine-MR window: a replayed update computes exactly the logits the network's forward gave, trains the adapter
alone, and leaves no hook behind. (The trained runs: tests/test_add_task_adapter.py, tests/test_add_task.py.)"""

from __future__ import annotations

import pytest
import torch

from hermesseg.model import load_model
from hermesseg.network.config import AdapterConfig
from hermesseg.training.add_task import ADAPTER
from hermesseg.training.feature_replay import FeatureReplay, ReplayPlan
from hermesseg.training.loss import hermes_loss
from hermesseg.training.sampling import make_targets

from cine_window import cine_window
from paths import require, SHIPPED_MODEL
from threads import one_torch_thread  # noqa: F401 (autouse fixture)

@pytest.fixture(scope="module")
def window():
    """A real ACDC image and label window on the model grid: image (2, 1, 16, 48, 48), label (2, 16, 48, 48)."""
    patch, labels = cine_window()
    assert labels.unique().tolist() == [0, 1, 2, 3]  # the window holds all three heart structures
    return patch.repeat(2, 1, 1, 1, 1), labels.repeat(2, 1, 1, 1)


def _taught_network():
    """The default model with three new rows, a new modality and add-task's adapter design (which reads the image
    too), its weights random so that the correction is not zero; the new rows and the adapter train, as in
    add-task."""
    net = load_model(require(SHIPPED_MODEL)).network
    rows = net.add_new_rows([0, 1, 2], [1])
    adapter = net.add_adapter(AdapterConfig("heart", tuple(rows), design=ADAPTER["design"], width=16))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    for p in net.parameters():
        p.requires_grad_(False)
    for p in net.new_prior_parameters() + list(adapter.parameters()):
        p.requires_grad_(True)
    return net.train(), rows


def test_a_replayed_batch_gives_the_forward_s_own_logits(window):
    image, label = window
    net, rows = _taught_network()
    query, modality = torch.tensor([rows + [-1]] * 2), torch.tensor([4, 4])
    with FeatureReplay(net, ReplayPlan(updates_per_step=1, pool_steps=2), seed=0) as replay:
        logits, _ = net(image, query, modality)
        targets = make_targets(label, query)
        replay.record(targets, query)
        replayed, replay_targets, replay_ids = replay.batch()
        assert torch.equal(replayed, logits)
        assert torch.equal(replay_targets, targets) and torch.equal(replay_ids, query)
        # the pool keeps the last `pool` steps only
        for _ in range(3):
            net(image, query, modality)
            replay.record(targets, query)
        assert len(replay.pool) == 2


def test_a_cropped_replay_takes_one_window_of_logits_features_and_targets(window):
    """``crop``: the update sees a random window of the pooled step, the same one in the head's logits, the features
    the adapter reads (the image included) and the targets. Checked with an adapter that outputs zero (as a new one
    does), so the replayed logits are the head's own, and with the head's logits recorded as the targets: then the two
    are equal only if both were cut at the same place."""
    image, _ = window
    net = load_model(require(SHIPPED_MODEL)).network.eval()
    rows = net.add_new_rows([0, 1, 2], [1])
    net.add_adapter(AdapterConfig("heart", tuple(rows), design=ADAPTER["design"], width=16))
    query, modality = torch.tensor([rows + [-1]] * 2), torch.tensor([4, 4])
    with torch.no_grad(), FeatureReplay(net, ReplayPlan(updates_per_step=1, pool_steps=1, crop=16), seed=0) as replay:
        logits, _ = net(image, query, modality)  # (2, 4, 16, 48, 48)
        replay.record(logits, query)
        seen = set()
        for _ in range(6):
            replayed, targets, _ = replay.batch()
            assert replayed.shape == (2, 4, 16, 16, 16) and torch.equal(replayed, targets)
            # the window is one of the 33 x 33 places a 16^3 crop has in the 16 x 48 x 48 grid
            where = [(int(y), int(x)) for y in range(33) for x in range(33)
                     if torch.equal(targets, logits[:, :, :, y:y + 16, x:x + 16])]
            assert len(where) == 1
            seen.add(where[0])
        assert len(seen) > 1  # drawn afresh for every update


def test_a_replayed_update_trains_the_adapter_and_not_the_rows(window):
    image, label = window
    net, rows = _taught_network()
    query, modality = torch.tensor([rows + [-1]] * 2), torch.tensor([4, 4])
    rows_before = [p.detach().clone() for p in net.new_prior_parameters()]
    adapter = net.adapters._modules["heart"]
    adapter_before = [p.detach().clone() for p in adapter.parameters()]
    optimizer = torch.optim.AdamW(net.new_prior_parameters() + list(adapter.parameters()), lr=1e-2)
    with FeatureReplay(net, ReplayPlan(updates_per_step=1, pool_steps=4), seed=0) as replay:
        with torch.no_grad():
            net(image, query, modality)
        replay.record(make_targets(label, query), query)
        replayed, targets, ids = replay.batch()
        optimizer.zero_grad(set_to_none=True)
        hermes_loss(replayed, targets, ids)[0].backward()
        assert all(p.grad is None for p in net.new_prior_parameters())  # no graph reaches the rows
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(rows_before, net.new_prior_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(adapter_before, adapter.parameters()))


def test_the_hooks_live_only_inside_the_context(window):
    image, _ = window
    net, rows = _taught_network()
    watched = (net.stem, net.decoder[-1], net.task_head)
    replay = FeatureReplay(net, ReplayPlan(updates_per_step=1, pool_steps=4), seed=0)
    with replay:
        assert all(len(m._forward_hooks) == 1 for m in watched) and len(net.stem._forward_pre_hooks) == 1
    assert all(len(m._forward_hooks) == 0 for m in watched) and len(net.stem._forward_pre_hooks) == 0
    assert len(replay.pool) == 0
    with torch.no_grad():
        net(image[:1], torch.tensor([rows + [-1]]), torch.tensor([4]))
    assert replay._seen == {}


def test_a_network_without_an_adapter_is_refused():
    net = load_model(require(SHIPPED_MODEL)).network
    with pytest.raises(ValueError, match="has none"):
        FeatureReplay(net, ReplayPlan(updates_per_step=1, pool_steps=4), seed=0)
