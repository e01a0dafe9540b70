import numpy as np
import pytest

from data_prep.wrapping import wrap_documents

BOS, EOS = 1, 2


def test_wrapping_by_hand():
    docs = [[10, 11, 12], [13], [14, 15, 16, 17]]
    # stream: 10 11 12 E 13 E 14 15 16 17 E  (11 tokens) -> chunks of L-2 = 3, remainder of 2 dropped
    expected = np.array([[BOS, 10, 11, 12, EOS],
                         [BOS, EOS, 13, EOS, EOS],
                         [BOS, 14, 15, 16, EOS]], dtype=np.int32)
    out = wrap_documents(docs, 5, BOS, EOS)
    assert out.dtype == np.int32 and np.array_equal(out, expected)


def test_wrapping_exact_fit_and_too_short():
    assert np.array_equal(wrap_documents([[7, 8]], 5, BOS, EOS), [[BOS, 7, 8, EOS, EOS]])
    assert wrap_documents([[7]], 5, BOS, EOS).shape == (0, 5)
    with pytest.raises(ValueError, match="too small"):
        wrap_documents([[7]], 2, BOS, EOS)


def test_wrapping_keeps_every_token_in_order():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(3, 100, rng.integers(1, 40))) for _ in range(50)]
    out = wrap_documents(docs, 16, BOS, EOS)
    stream = [t for d in docs for t in d + [EOS]]
    assert out[:, 1:-1].ravel().tolist() == stream[: out.shape[0] * 14]
    assert len(stream) - out.shape[0] * 14 < 14
