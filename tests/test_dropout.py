"""layers.dropout: nn.Dropout's distribution with a cheaper CPU mask (checked against its definition)."""

import torch
import torch.nn.functional as F

from recbole_timeplug.layers.dropout import Dropout


def test_keeps_with_probability_1_minus_p_and_scales():
    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    layer = Dropout(0.2).train()
    y = layer(x)
    kept = y != 0
    # 400k Bernoulli(0.8) draws: the kept fraction is within 5 standard errors (0.0032) of 0.8
    assert abs(kept.float().mean().item() - 0.8) < 0.0032
    assert torch.equal(y[kept], torch.full_like(y[kept], 1.25))
    (y * torch.arange(x.numel(), dtype=torch.float32)).sum().backward()
    # d/dx of x * keep / (1 - p): the same mask and scale as the forward pass
    assert torch.equal(x.grad, torch.where(kept, 1.25 * torch.arange(x.numel(), dtype=torch.float32), 0.0))


def test_masks_are_independent_across_calls_and_positions():
    torch.manual_seed(1)
    layer = Dropout(0.5).train()
    a, b = (layer(torch.ones(200_000)) != 0).float(), (layer(torch.ones(200_000)) != 0).float()
    assert abs((a * b).mean().item() - 0.25) < 0.005  # P(kept twice) = 0.5 * 0.5
    assert abs((a[1:] * a[:-1]).mean().item() - 0.25) < 0.005  # neighbours independent


def test_eval_identity_and_slow_path_is_nn_dropout():
    x = torch.randn(4, 7, 3)
    assert Dropout(0.3).eval()(x) is x and Dropout(0.0).train()(x) is x
    torch.manual_seed(5)
    want = F.dropout(x, 0.3, training=True)
    torch.manual_seed(5)
    assert torch.equal(Dropout(0.3, fast=False).train()(x), want)
