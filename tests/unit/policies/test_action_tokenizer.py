"""ActionTokenizer: round trip within half a bin, clipping, per-dimension ranges, errors."""

import pytest
import torch

from vlarl.policies.token_vla.action_tokenizer import ActionTokenizer


def test_round_trip_within_half_bin():
    tok = ActionTokenizer(bins=256, low=-1.0, high=1.0)
    a = torch.rand(1000, 4, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ids = tok.tokenize(a)
    assert ids.shape == a.shape and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) <= 255
    err = (tok.detokenize(ids) - a).abs().max().item()
    assert err <= 1.0 / 256 + 1e-6  # half of the bin width 2/256


def test_out_of_range_is_clipped():
    tok = ActionTokenizer(bins=10, low=-1.0, high=1.0)
    ids = tok.tokenize(torch.tensor([-5.0, -1.0, 1.0, 7.0, 0.0]))
    assert ids.tolist() == [0, 0, 9, 9, 5]
    centres = tok.detokenize(torch.tensor([-3, 0, 9, 42])).tolist()
    assert centres == pytest.approx([-0.9, -0.9, 0.9, 0.9])


def test_per_dimension_ranges():
    tok = ActionTokenizer(bins=4, low=[0.0, -2.0], high=[1.0, 2.0])
    ids = tok.tokenize(torch.tensor([[0.1, 1.9], [0.9, -1.9]]))
    assert ids.tolist() == [[0, 3], [3, 0]]
    assert torch.allclose(tok.detokenize(ids), torch.tensor([[0.125, 1.5], [0.875, -1.5]]))


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="bins=1"):
        ActionTokenizer(bins=1)
    with pytest.raises(ValueError, match="low=1.0"):
        ActionTokenizer(bins=8, low=1.0, high=-1.0)
