"""Pooling against hand-computed values under left and right padding."""

import pytest
import torch

from probing.extraction.pooling import PoolingError, pool_states, validate_poolings

ALL = ("mean", "max", "last", "first", "index:1", "index:-2", "image_mean", "text_mean")


def _example():
    # Two real sequences of different length, D = 2. Row 0 has 3 tokens
    # (token 0 an image token), row 1 has 2 tokens (both text).
    row0 = torch.tensor([[1.0, 2.0], [3.0, -4.0], [5.0, 0.0]])
    row1 = torch.tensor([[-1.0, 10.0], [7.0, 6.0]])
    image0 = torch.tensor([True, False, False])
    image1 = torch.tensor([False, False])
    return (row0, image0), (row1, image1)


def _pad(rows, side, length=4):
    states = torch.full((len(rows), length, 2), 99.0)  # padding values must never leak in
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    image = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, (values, is_image) in enumerate(rows):
        n = values.shape[0]
        sl = slice(0, n) if side == "right" else slice(length - n, length)
        states[i, sl] = values
        mask[i, sl] = 1
        image[i, sl] = is_image
    return states, mask, image


EXPECTED = {
    "mean": [[3.0, -2.0 / 3.0], [3.0, 8.0]],
    "max": [[5.0, 2.0], [7.0, 10.0]],
    "last": [[5.0, 0.0], [7.0, 6.0]],
    "first": [[1.0, 2.0], [-1.0, 10.0]],
    "index:1": [[3.0, -4.0], [7.0, 6.0]],
    "index:-2": [[3.0, -4.0], [-1.0, 10.0]],
    "image_mean": [[1.0, 2.0], [0.0, 0.0]],  # no image tokens in row 1: zero vector
    "text_mean": [[4.0, -2.0], [3.0, 8.0]],
}


@pytest.mark.parametrize("side", ["left", "right"])
def test_pooling_matches_hand_computation(side):
    states, mask, image = _pad(_example(), side)
    pooled = pool_states(states, mask, image, ALL)
    for name, expected in EXPECTED.items():
        torch.testing.assert_close(pooled[name], torch.tensor(expected), msg=f"{name}, {side}")


def test_pooling_runs_in_float32_for_half_inputs():
    states, mask, image = _pad(_example(), "left")
    pooled = pool_states(states.to(torch.bfloat16), mask, image, ("mean", "last"))
    assert all(v.dtype == torch.float32 for v in pooled.values())
    torch.testing.assert_close(pooled["last"], torch.tensor(EXPECTED["last"]))


def test_bad_pooling_names():
    with pytest.raises(PoolingError, match="unknown pooling 'avg'"):
        validate_poolings(["avg"])
    with pytest.raises(PoolingError, match="index:K"):
        validate_poolings(["index:x"])
    with pytest.raises(PoolingError, match="text-only"):
        validate_poolings(["image_mean"], with_image=False)
    states, mask, image = _pad(_example(), "right")
    with pytest.raises(PoolingError, match="outside a prompt"):
        pool_states(states, mask, image, ("index:2",))
