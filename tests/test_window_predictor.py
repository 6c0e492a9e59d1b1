"""One encoder pass per window for every task group (spec 6): same probabilities as a full forward per group."""

from __future__ import annotations

import pytest
import torch

from hermesseg.inference.query_plan import GroupQuery
from hermesseg.inference.sliding_window import sliding_window_queries, window_predictor
from hermesseg.network import HermesR, HermesRConfig

TINY = dict(base_channels=4, head_dim=8, num_task_rows=8, num_modalities=3)
# Three groups of different sizes (null token last), and which of their channels were asked for.
QUERIES = [GroupQuery("a", (0, 1, 2, -1), (2, 0)), GroupQuery("b", (3, -1), (0,)), GroupQuery("c", (4, 5, 6, 7, -1),
                                                                                                  (1, 3))]


def _net(mask_padding: bool) -> HermesR:
    torch.manual_seed(0)
    return HermesR(HermesRConfig(**TINY, mask_padding=mask_padding)).eval()


def _windows(b=3, size=(32, 32, 32)):
    return torch.randn((b, 1, *size), generator=torch.Generator().manual_seed(3))


def test_decode_of_the_shared_encoder_equals_the_forward():
    net = _net(True)
    x = _windows(2)
    ids, mod = torch.tensor([[0, 1, -1], [2, -1, -1]]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(net.decode(net.encode_shared(x), ids, mod)[0], net(x, ids, mod)[0])
        with pytest.raises(ValueError, match="batch"):
            net.decode(net.encode_shared(x[:1]), ids, mod)


@pytest.mark.parametrize("mask_padding", [True, False])
def test_groups_from_one_encoder_pass_match_a_full_pass_per_group(mask_padding):
    """Masked models decode all groups as one padded batch; unmasked (official) ones one group at a time, exactly."""
    net = _net(mask_padding)
    x = _windows()
    new = window_predictor(net, QUERIES, 1, torch.device("cpu"), share_encoder=True)(x)
    old = window_predictor(net, QUERIES, 1, torch.device("cpu"), share_encoder=False)(x)
    assert new.shape == (3, 5, 32, 32, 32)
    tolerance = 1e-5 if mask_padding else 0.0
    assert (new - old).abs().max() <= tolerance
    # The per-group channels are the ones a plain forward of that group gives.
    with torch.no_grad():
        alone = torch.sigmoid(net(x, torch.tensor([QUERIES[2].task_ids]).expand(3, -1), torch.tensor([1] * 3))[0])
    assert (new[:, 3:] - alone[:, [1, 3]]).abs().max() <= 1e-5


def test_sliding_window_over_several_queries_matches_one_pass_per_query():
    net = _net(True)
    image = torch.randn((40, 36, 50), generator=torch.Generator().manual_seed(5))
    together = sliding_window_queries(net, image, QUERIES, 0, (32, 32, 32), 0.5, batch_size=2)
    apart = torch.cat([sliding_window_queries(net, image, [q], 0, (32, 32, 32), 0.5, batch_size=1,
                                              share_encoder=False) for q in QUERIES])
    assert together.shape == (5, 40, 36, 50)
    assert (together - apart).abs().max() < 1e-4  # batch 2 and batch 1 convolutions round differently
