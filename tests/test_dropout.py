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
    # p rounded to 16 bits: p' = 13107 / 65536 = 0.19999695, scale 1 / (1 - p')
    scale = 65536 / (65536 - 13107)
    assert abs(scale - 1.25) < 1e-5
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], scale), rtol=0, atol=0)
    (y * torch.arange(x.numel(), dtype=torch.float32)).sum().backward()
    # d/dx of x * keep / (1 - p'): the same mask and scale as the forward pass
    want = torch.where(kept, torch.arange(x.numel(), dtype=torch.float32) * scale, 0.0)
    torch.testing.assert_close(x.grad, want, rtol=1e-6, atol=0)


def test_odd_sizes_and_small_p_keep_the_right_fraction():
    torch.manual_seed(3)
    y = Dropout(0.1).train()(torch.ones(3, 33_331))  # numel not a multiple of the 4 masks one draw gives
    kept = (y != 0).float()
    assert y.shape == (3, 33_331)
    assert abs(kept.mean().item() - 0.9) < 5 * (0.09 / kept.numel()) ** 0.5
    assert Dropout(1.0).train()(torch.ones(5)).eq(0).all()


def test_masks_are_independent_across_calls_and_positions():
    torch.manual_seed(1)
    layer = Dropout(0.5).train()
    a, b = (layer(torch.ones(200_000)) != 0).float(), (layer(torch.ones(200_000)) != 0).float()
    assert abs((a * b).mean().item() - 0.25) < 0.005  # P(kept twice) = 0.5 * 0.5
    assert abs((a[1:] * a[:-1]).mean().item() - 0.25) < 0.005  # neighbours (bits of one draw) independent
    assert abs((a[4:] * a[:-4]).mean().item() - 0.25) < 0.005  # the same 16 bits of consecutive draws


def test_eval_identity_and_slow_path_is_nn_dropout():
    x = torch.randn(4, 7, 3)
    assert Dropout(0.3).eval()(x) is x and Dropout(0.0).train()(x) is x
    torch.manual_seed(5)
    want = F.dropout(x, 0.3, training=True)
    torch.manual_seed(5)
    assert torch.equal(Dropout(0.3, fast=False).train()(x), want)
