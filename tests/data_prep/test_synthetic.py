"""The synthetic Markov corpus: the chain is what it claims (rows, stationary law, entropy rate), the samples follow
it, the chain file round-trips and refuses bad input, and the CLI's FASTA reads back into ``prepare``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from data_prep.__main__ import main as cli
from data_prep.config import PrepareConfig
from data_prep.documents import ReadStats, fasta_documents
from data_prep.prepare import prepare
from data_prep.regime_chain import load_chain
from data_prep.synthetic import STANDARD_AMINO_ACIDS, ChainError, MarkovChain, make_markov_chain, sample_records
from data_prep.tokenizers import ProteinTokenizer, build_tokenizer

K = len(STANDARD_AMINO_ACIDS)


def letter_indices(records: list[str], alphabet: str = STANDARD_AMINO_ACIDS) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(alphabet)}
    return np.array([[lookup[c] for c in record] for record in records])


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.abs(p - q).sum() / 2)


def binary_entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def test_alphabet_is_the_protein_tokenizers_standard_letters():
    assert STANDARD_AMINO_ACIDS == ProteinTokenizer.ALPHABET[:20]


def test_rows_put_mass_on_the_successors_and_spread_the_rest_evenly():
    """The sparse structure a judge can rely on: ``mass`` on the successors, (1 - mass)/(K - s) elsewhere."""
    chain = make_markov_chain(successors=3, seed=7, mass=0.99)
    p = chain.transition
    assert p.shape == (K, K) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    for i, successors in enumerate(chain.successors):
        assert successors == sorted(set(successors)) and len(successors) == 3
        assert p[i, successors].sum() == pytest.approx(0.99, abs=1e-12)
        others = np.delete(p[i], successors)
        assert np.all(others == (1 - 0.99) / (K - 3))


def test_same_seed_same_chain_and_records_other_seed_differs():
    chain, again, other = make_markov_chain(seed=3), make_markov_chain(seed=3), make_markov_chain(seed=4)
    assert chain.to_json() == again.to_json()
    assert not np.array_equal(chain.transition, other.transition)
    records = sample_records(chain, 20, 100, seed=5)
    assert records == sample_records(again, 20, 100, seed=5)
    assert records != sample_records(chain, 20, 100, seed=6)
    assert len(records) == 20 and all(len(r) == 100 and set(r) <= set(STANDARD_AMINO_ACIDS) for r in records)


def test_stationary_is_invariant_and_the_long_run_letter_frequency():
    """pi @ P == pi exactly enough, and 200k sampled letters are distributed as pi."""
    chain = make_markov_chain(successors=3, seed=11)
    np.testing.assert_allclose(chain.stationary @ chain.transition, chain.stationary, rtol=0, atol=1e-12)
    assert chain.stationary.sum() == pytest.approx(1.0, abs=1e-12) and (chain.stationary >= 0).all()
    letters = letter_indices(sample_records(chain, 50, 4000, seed=12)).ravel()
    frequency = np.bincount(letters, minlength=K) / letters.size
    assert total_variation(frequency, chain.stationary) < 0.02
    assert total_variation(np.full(K, 1 / K), chain.stationary) > 0.1  # the bound above is not trivially met
    first_letters = letter_indices(sample_records(chain, 4000, 1, seed=13)).ravel()
    assert total_variation(np.bincount(first_letters, minlength=K) / first_letters.size, chain.stationary) < 0.05


def test_entropy_rate_of_a_two_state_chain_by_hand():
    """P = [[0.9, 0.1], [0.5, 0.5]]: pi = (5/6, 1/6), H = 5/6 h(0.1) + 1/6 h(0.5) nats."""
    chain = MarkovChain("AC", np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([5 / 6, 1 / 6]), [[0], [0, 1]])
    assert chain.entropy_rate == pytest.approx(5 / 6 * binary_entropy(0.1) + 1 / 6 * binary_entropy(0.5), rel=1e-12)
    deterministic = MarkovChain("AC", np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0.5, 0.5]), [[1], [0]])
    assert deterministic.entropy_rate == 0.0  # 0 log 0 = 0, and no -0.0


def test_sampled_transitions_follow_the_matrix():
    chain = make_markov_chain(successors=2, seed=21, mass=0.95)
    states = letter_indices(sample_records(chain, 400, 500, seed=22))
    counts = np.zeros((K, K))
    np.add.at(counts, (states[:, :-1].ravel(), states[:, 1:].ravel()), 1)
    for i in range(K):
        if counts[i].sum() > 2000:
            assert total_variation(counts[i] / counts[i].sum(), chain.transition[i]) < 0.05, f"row {i}"
    assert (counts.sum(axis=1) > 2000).sum() >= K // 2  # enough rows were checked


def test_json_round_trips_exactly():
    chain = make_markov_chain(successors=4, seed=31, mass=0.9)
    data = json.loads(json.dumps(chain.to_json(), indent=1))
    back = MarkovChain.from_json(data, source="test")
    assert np.array_equal(back.transition, chain.transition) and np.array_equal(back.stationary, chain.stationary)
    assert back.to_json() == chain.to_json() and back.seed == 31 and back.entropy_rate == chain.entropy_rate
    assert set(data) == {"format", "kind", "order", "alphabet", "seed", "transition", "stationary", "successors",
                         "entropy_rate_nats"}


def _row_not_summing_to_one(data):
    data["transition"][2][0] += 0.01


def _negative_entry(data):
    data["transition"][0] = [-0.5, 1.5] + [0.0] * (K - 2)


def _non_square(data):
    data["transition"] = [row[:-1] for row in data["transition"]]


def _wrong_stationary(data):
    data["stationary"] = [1 / K] * K


def _duplicate_letters(data):
    data["alphabet"] = "A" + data["alphabet"][1:-1] + "A"


def _successor_out_of_range(data):
    data["successors"][5] = [0, K]


def _other_format(data):
    data["format"] = 2


@pytest.mark.parametrize("corrupt,key", [
    (_row_not_summing_to_one, "transition row 2"), (_negative_entry, "transition row 0 has a negative"),
    (_non_square, "transition must be a square"), (_wrong_stationary, "stationary"),
    (_duplicate_letters, "alphabet"), (_successor_out_of_range, "successors row 5"), (_other_format, "format"),
])
def test_invalid_chain_is_refused_naming_the_key(corrupt, key):
    data = make_markov_chain(seed=41).to_json()
    corrupt(data)
    with pytest.raises(ChainError, match=f"^bad.json: {key}"):
        MarkovChain.from_json(data, source="bad.json")


def test_unreadable_chain_files_are_chain_errors(tmp_path):
    (tmp_path / "chain.json").write_text('{"format": 1, "kind": ')
    with pytest.raises(ChainError, match="chain.json: not valid JSON"):
        load_chain(tmp_path)
    with pytest.raises(ChainError, match="no such chain file"):
        load_chain(tmp_path / "missing.json")


def run_cli(out: Path, *flags: str) -> int:
    return cli(["synthetic", "markov", "--out", str(out), "--records", "30", "--length", "150", *flags])


def test_cli_corpus_reads_back_and_tokenizes(tmp_path, capsys):
    """What the CLI writes is the chain and the records it claims, and the protein pipeline reads it unchanged."""
    out = tmp_path / "markov"
    assert run_cli(out, "--seed", "5") == 0
    assert "30 records, 4,500 letters" in capsys.readouterr().out
    chain = load_chain(out)
    assert chain.to_json() == make_markov_chain(seed=5).to_json()
    stored = json.loads((out / "chain.json").read_text())
    assert stored["records"] == 30 and stored["length"] == 150
    with open(out / "chain.fasta") as f:
        docs = list(fasta_documents(f, out / "chain.fasta", ReadStats(), strict=True))
    assert docs == sample_records(chain, 30, 150, seed=6)
    assert max(len(line) for line in (out / "chain.fasta").read_text().splitlines()) == 60
    tok = build_tokenizer("protein", iter(()))
    assert all(tok.decode(tok.encode(doc)) == doc for doc in docs)


def test_prepare_reads_the_fasta_with_the_protein_tokenizer(tmp_path):
    assert run_cli(tmp_path / "markov") == 0
    cfg = PrepareConfig(inputs=[str(tmp_path / "markov" / "chain.fasta")], out=str(tmp_path / "data"),
                        tokenizer="protein", seq_len=64, val_fraction=0.2, workers=1)
    manifest = prepare(cfg, log=lambda _: None)
    assert manifest["sources"]["documents"] == 30 and manifest["sources"]["skipped_records"] == 0


def test_cli_accepts_the_same_corpus_and_refuses_other_content(tmp_path, capsys):
    out = tmp_path / "markov"
    assert run_cli(out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run_cli(out) == 0 and "already holds exactly this corpus" in capsys.readouterr().out
    assert run_cli(out, "--seed", "1") == 2 and "holds a different corpus" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("unrelated")
    assert run_cli(other) == 2 and "notes.txt" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("flags,flag", [
    (["--successors", "21"], "--successors"), (["--mass", "0"], "--mass"), (["--records", "0"], "--records"),
    (["--length", "-1"], "--length"), (["--seed", "-3"], "--seed"),
    (["--successors", "20"], "--mass"),  # all letters are successors: nothing left for 1 - mass
    (["--successors", "1", "--mass", "1", "--seed", "2"], "--mass"),  # two closed classes: no unique pi
])
def test_cli_bad_arguments_exit_2_naming_the_flag(tmp_path, capsys, flags, flag):
    assert run_cli(tmp_path / "markov", *flags) == 2
    assert flag in capsys.readouterr().err and not (tmp_path / "markov").exists()
