import pytest

from data_prep.tokenizers import (GPT2Tokenizer, ProteinTokenizer, SentencePieceTokenizer, TokenizerError,
                                  load_tokenizer)
from tests.conftest import CORPUS, write_tiny_gpt2_ranks

TRICKY = [
    "  leading spaces,\ttabs\t\tand trailing spaces   \n\n\n\n   indented\n",
    "\n\n\nonly newlines before\r and a carriage return",
    "Ünïcödé — 日本語 テキスト, emoji 🙂🙃, Ελληνικά, עברית, math ∑∫√",
    "x" * 3000 + "    " + "\u00a0\u2003non-breaking and em spaces",
    "",
]


def corpus_lines(n_files=None):
    files = sorted(CORPUS.glob("*.txt"))[:n_files]
    return [line for f in files for line in f.read_text().split("\n") if line]


@pytest.fixture(scope="module")
def spm_tok():
    return SentencePieceTokenizer.train(iter(corpus_lines()), 2000, "bpe", 1_000_000)


def test_spm_lossless_on_whole_embedded_corpus(spm_tok):
    for path in sorted(CORPUS.glob("*.txt")):
        text = path.read_text()
        ids = spm_tok.encode(text)
        assert spm_tok.decode(ids) == text, path.name
        assert len(ids) < len(text) / 2  # a real subword vocabulary, not bytes


@pytest.mark.parametrize("text", TRICKY)
def test_spm_lossless_on_whitespace_and_non_ascii(spm_tok, text):
    assert spm_tok.decode(spm_tok.encode(text)) == text


def test_spm_special_ids_and_mask(spm_tok):
    assert (spm_tok.bos_id, spm_tok.eos_id, spm_tok.pad_id) == (1, 2, 3)
    assert spm_tok.vocab_size == 2000 and spm_tok.mask_id == 2000
    assert spm_tok.encode("\n") == [4]  # newline is one piece
    with pytest.raises(TokenizerError, match=r"id 2000 \(\[MASK\]"):
        spm_tok.decode([5, spm_tok.mask_id])


def test_spm_training_is_deterministic():
    lines = corpus_lines(1)
    a = SentencePieceTokenizer.train(iter(lines), 400, "bpe", 1_000_000)
    b = SentencePieceTokenizer.train(iter(lines), 400, "bpe", 1_000_000)
    assert a.fingerprint == b.fingerprint


def test_spm_too_large_vocabulary_is_a_clear_error():
    with pytest.raises(TokenizerError, match="vocabulary size 50000"):
        SentencePieceTokenizer.train(iter(["a tiny corpus", "of two lines"]), 50000, "bpe", 1000)


def test_save_load_keeps_fingerprint_and_detects_tampering(spm_tok, tmp_path):
    spm_tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.fingerprint == spm_tok.fingerprint and loaded.encode("To be") == spm_tok.encode("To be")
    other = SentencePieceTokenizer.train(iter(corpus_lines(1)), 400, "bpe", 1_000_000)
    (tmp_path / "tok" / "spm.model").write_bytes(other._model_bytes)
    with pytest.raises(TokenizerError, match="does not match tokenizer.json"):
        load_tokenizer(tmp_path / "tok")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_gpt2_bpe_from_local_ranks_file(tmp_path):
    ranks = write_tiny_gpt2_ranks(tmp_path / "gpt2.tiktoken")
    tok = GPT2Tokenizer((tmp_path / "gpt2.tiktoken").read_bytes())
    eot = len(ranks)
    assert tok.vocab_size == eot + 1 and tok.bos_id == tok.eos_id == tok.pad_id == eot and tok.mask_id == eot + 1
    assert tok.encode("the") == [ranks[b"the"]]
    # merges apply in rank order: "th" (256) before " t" (258), so " thing" is " ", "th", "ing"
    assert tok.encode(" thing") == [ranks[b" "], ranks[b"th"], ranks[b"ing"]]
    assert tok.encode(" the") == [ranks[b" the"]]
    for text in TRICKY + ["<|endoftext|> is plain text here"]:
        assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").fingerprint == tok.fingerprint


def test_gpt2_ranks_file_errors_are_named(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not-base64!! zero\n")
    with pytest.raises(TokenizerError, match="line 1"):
        GPT2Tokenizer(bad.read_bytes())
    bad.write_text("YQ== 0\n")  # only the byte 'a'
    with pytest.raises(TokenizerError, match="not every single byte"):
        GPT2Tokenizer(bad.read_bytes())


def test_protein_alphabet_round_trip():
    tok = ProteinTokenizer()
    seq = "MKTAYIAKQRQISFVKSHFSRQXBZUO"
    ids = tok.encode(seq)
    assert ids[:3] == [3 + tok.ALPHABET.index(c) for c in "MKT"]
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == seq
    assert tok.vocab_size == 28 and tok.mask_id == 28
    with pytest.raises(TokenizerError, match="'J' is not an amino-acid letter"):
        tok.encode("MKJ")
