from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from trainlab.augment import AUGMENTATIONS, GaussianNoise, Scale, Shift


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


EXAMPLES = {"shift": {"max_shift": 2}, "gaussian_noise": {"std": 0.1}, "scale": {}}


def test_every_augmentation_has_an_example_and_a_description():
    assert sorted(AUGMENTATIONS.names()) == sorted(EXAMPLES)
    for name in AUGMENTATIONS:
        assert AUGMENTATIONS.get(name).describe()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_round_trip(name):
    aug = AUGMENTATIONS.create({"name": name, **EXAMPLES[name]})
    assert AUGMENTATIONS.create(aug.model_dump()) == aug


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.parametrize("shape", [(5, 12), (5, 3, 12), (5, 2, 6, 7)])
def test_shape_dtype_and_determinism(name, shape):
    aug = AUGMENTATIONS.create({"name": name, **EXAMPLES[name]})
    x = torch.randn(shape, generator=gen(1))
    a, b, c = aug(x, gen(3)), aug(x, gen(3)), aug(x, gen(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("bad", [{"name": "shift", "max_shift": 0}, {"name": "shift", "max_shift": 1, "mode": "wrap"},
                                 {"name": "gaussian_noise", "std": 0.0}, {"name": "scale", "low": 0.0},
                                 {"name": "scale", "low": 1.2, "high": 1.2}])
def test_invalid_values_are_rejected(bad):
    with pytest.raises(ValidationError):
        AUGMENTATIONS.create(bad)


def test_scale_error_names_the_fields():
    with pytest.raises(ValidationError, match="'high' parameter of Scale must be greater than 'low'"):
        Scale(low=2.0, high=1.0)


def _shifts(max_shift: int, n: int, seed: int, draws: int = 1) -> list[torch.Tensor]:
    """The per-sample shifts Shift draws from the same generator, in the same order."""
    g = gen(seed)
    return [torch.randint(-max_shift, max_shift + 1, (n,), generator=g) for _ in range(draws)]


def test_shift_roll_1d_matches_torch_roll_per_sample():
    x = torch.arange(24.0).view(3, 2, 4)
    out = Shift(max_shift=3)(x, gen(7))
    (s,) = _shifts(3, 3, 7)
    for n in range(3):
        torch.testing.assert_close(out[n], torch.roll(x[n], int(s[n]), dims=-1))


def test_shift_on_a_hand_made_example():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    # Find a seed whose shift is +2, so the example below is fixed by hand.
    seed = next(k for k in range(100) if int(_shifts(2, 1, k)[0][0]) == 2)
    assert torch.equal(Shift(max_shift=2)(x, gen(seed)), torch.tensor([[4.0, 5.0, 1.0, 2.0, 3.0]]))
    assert torch.equal(Shift(max_shift=2, mode="pad")(x, gen(seed)), torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]]))
    seed = next(k for k in range(100) if int(_shifts(2, 1, k)[0][0]) == -1)
    assert torch.equal(Shift(max_shift=2)(x, gen(seed)), torch.tensor([[2.0, 3.0, 4.0, 5.0, 1.0]]))
    assert torch.equal(Shift(max_shift=2, mode="pad")(x, gen(seed)), torch.tensor([[2.0, 3.0, 4.0, 5.0, 0.0]]))


def test_shift_pad_matches_a_loop_reference():
    x = torch.randn(6, 2, 9, generator=gen(0))
    out = Shift(max_shift=4, mode="pad")(x, gen(5))
    (s,) = _shifts(4, 6, 5)
    for n in range(6):
        for i in range(9):
            j = i - int(s[n])
            expected = x[n, :, j] if 0 <= j < 9 else torch.zeros(2)
            torch.testing.assert_close(out[n, :, i], expected)


def test_shift_images_moves_both_axes_independently():
    x = torch.randn(4, 3, 5, 6, generator=gen(0))
    out = Shift(max_shift=2)(x, gen(9))
    rows, cols = _shifts(2, 4, 9, draws=2)
    for n in range(4):
        torch.testing.assert_close(out[n], torch.roll(x[n], (int(rows[n]), int(cols[n])), dims=(-2, -1)))


def test_shift_rejects_unsupported_shapes():
    with pytest.raises(ValueError, match=r"Got shape \(4,\) instead"):
        Shift(max_shift=1)(torch.zeros(4), gen())


def test_shift_draws_every_offset():
    x = torch.zeros(2000, 7)
    x[:, 3] = 1.0
    positions = Shift(max_shift=3, mode="pad")(x, gen(0)).argmax(dim=1)
    assert set(positions.tolist()) == set(range(7))


def test_gaussian_noise_has_the_requested_std():
    x = torch.full((200, 500), 3.0)
    noise = GaussianNoise(std=0.5)(x, gen(0)) - x
    # 100k draws: the sample mean and std are within ~5 standard errors of 0 and 0.5.
    assert abs(noise.mean().item()) < 5 * 0.5 / 100_000 ** 0.5
    assert abs(noise.std().item() - 0.5) < 5 * 0.5 / (2 * 100_000) ** 0.5


def test_scale_factors_are_per_sample_and_in_range():
    x = torch.ones(1000, 3, 4)
    out = Scale(low=0.5, high=2.0)(x, gen(0))
    factors = out[:, 0, 0]
    assert torch.equal(out, factors.view(-1, 1, 1).expand_as(out))
    assert factors.min() >= 0.5 and factors.max() <= 2.0
    assert abs(factors.mean().item() - 1.25) < 0.05
