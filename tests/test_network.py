"""Behaviour of the Hermes-R network that the product relies on (spec 1.6, 1.7, 4)."""

from __future__ import annotations

import torch

from hermesseg.network import HermesR, HermesRConfig

TINY = dict(base_channels=4, head_dim=8, num_task_rows=6, num_modalities=3)


def _net(**kw) -> HermesR:
    torch.manual_seed(0)
    return HermesR(HermesRConfig(**{**TINY, **kw})).eval()


def _run(net, tasks, modality=0, size=(32, 32, 48), seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 1, *size, generator=g)
    with torch.no_grad():
        return net(image, torch.tensor([tasks]), torch.tensor([modality]))[0][0]


def test_output_shapes_follow_the_query():
    net = _net()
    image = torch.randn(2, 1, 20, 28, 36)  # odd, non-cubic size
    seg, mod = net(image, torch.tensor([[0, 1, -1], [2, -1, -1]]), torch.tensor([[0], [2]]))
    assert seg.shape == (2, 3, 20, 28, 36)
    assert mod.shape == (2, 3)


def test_masked_padding_makes_outputs_independent_of_padding_count():
    net = _net(mask_padding=True)
    one = _run(net, [0, 1, -1])
    many = _run(net, [0, 1, -1, -1, -1, -1, -1])
    assert torch.allclose(one[:2], many[:2], atol=1e-4)


def test_unmasked_padding_reproduces_the_reference_dependence():
    """Official models keep the reference behaviour: every null copy is a key, so padding changes the output."""
    net = _net(mask_padding=False)
    one = _run(net, [0, 1, -1])
    many = _run(net, [0, 1, -1, -1, -1, -1, -1])
    assert (one[:2] - many[:2]).abs().max() > 1e-3


def test_task_order_is_equivariant():
    net = _net()
    a = _run(net, [0, 1, 2, -1])
    b = _run(net, [2, 0, 1, -1])
    assert torch.allclose(a[[2, 0, 1]], b[:3], atol=1e-4)


def test_appending_task_rows_leaves_old_tasks_and_null_token_untouched():
    net = _net()
    before = _run(net, [0, 1, -1])
    task1_alone = _run(net, [1, -1])
    nulls = [layer.null_token.clone() for layer in net.fusion]
    new_ids = net.append_task_rows(2, init_from=[1, 1])
    assert new_ids == [6, 7] and net.num_task_rows == 8 and net.config.num_task_rows == 8
    after = _run(net, [0, 1, -1])
    assert torch.equal(before, after)
    assert all(torch.equal(n, layer.null_token) for n, layer in zip(nulls, net.fusion))
    copy = _run(net, [6, -1])
    assert torch.allclose(copy[0], task1_alone[0], atol=1e-5)  # initialised as a copy of task 1


def test_invalid_ids_are_refused():
    net = _net()
    image = torch.zeros(1, 1, 16, 16, 16)
    for tasks, mod in (([[6]], [0]), ([[-2]], [0]), ([[0]], [3])):
        try:
            net(image, torch.tensor(tasks), torch.tensor(mod))
        except ValueError as e:
            assert "out of range" in str(e)
        else:
            raise AssertionError(f"accepted tasks={tasks} modality={mod}")
