from data_prep.config import flatten
from data_prep.tokenizers import ProteinTokenizer
from pipeline.measure.text import render
from pipeline.runtime.tracking import param_strings


def test_render_drops_bos_breaks_at_eos_and_shows_masks():
    tok = ProteinTokenizer()  # ids 0-2: PAD, BOS, EOS; letters from 3
    m, k = tok.encode("M")[0], tok.encode("K")[0]
    ids = [tok.bos_id, m, k, tok.eos_id, k, tok.mask_id, m, tok.mask_id]
    assert render(ids, tok) == ("MK\n\nK[MASK]M[MASK]", 2)
    assert render([tok.bos_id, m, tok.eos_id], tok) == ("M\n\n", 0)


def test_flatten_nested_params():
    assert param_strings({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "None"}
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
