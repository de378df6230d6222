"""Ranks agree on the per-step largest rates (max over ranks) before refreshing n_exp."""

import torch

from fondtrain.model.n_exp import agree_max_rates


def test_agree_max_rates_takes_the_max_over_ranks():
    # [P, t_total] per rank (P = 2 members, 3 steps); the gather stacks [world, P, t_total]
    other_rank = torch.tensor([[[5.0, 0.5, 2.0], [0.1, 4.0, 1.0]]])
    mine = torch.tensor([[1.0, 3.0, 2.5], [0.2, 0.3, 7.0]])
    gather = lambda r: torch.cat([r, other_rank])  # noqa: E731 - stands in for accelerator.gather
    torch.testing.assert_close(agree_max_rates(mine, gather),
                               torch.tensor([[5.0, 3.0, 2.5], [0.2, 4.0, 7.0]]))
    assert agree_max_rates(mine) is mine
