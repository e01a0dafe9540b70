"""The regime-switching corpus: the chain is what it claims (A, the joint chain, ψ, the letter bigrams), the samples
follow it (switches and bigrams), the file round-trips and refuses bad input naming the key, ``load_chain`` reads
both families, and the CLI's corpus goes through ``prepare`` and the exact judge."""
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
from data_prep.regime_chain import (RegimeChain, as_regime_chain, conditional_entropy, joint_transition, load_chain,
                                    make_regime_chain, regime_transition)
from data_prep.synthetic import (STANDARD_AMINO_ACIDS, ChainError, MarkovChain, make_markov_chain, sample_records,
                                 sample_states, write_synthetic)
from data_prep.tokenizers import build_tokenizer
from pipeline.measure.exact_judge import load_exact_judge

K = len(STANDARD_AMINO_ACIDS)


def tiny_regime_chain(switch: float = 0.2) -> RegimeChain:
    """2 regimes over A, C, D, each with two preferred successors per letter (0.05 elsewhere); ψ by power iteration
    of the joint chain, so it does not rely on the code under test."""
    transitions = np.array([[[0.70, 0.25, 0.05], [0.05, 0.50, 0.45], [0.60, 0.05, 0.35]],
                            [[0.10, 0.05, 0.85], [0.75, 0.20, 0.05], [0.05, 0.30, 0.65]]])
    successors = [[[0, 1], [1, 2], [0, 2]], [[0, 2], [0, 1], [1, 2]]]
    a = np.array([[1 - switch, switch], [switch, 1 - switch]])
    joint = np.einsum("ab,bxy->axby", a, transitions).reshape(6, 6)
    psi = np.linalg.matrix_power(joint, 2000)[0].reshape(2, 3)
    return RegimeChain("ACD", transitions, switch, psi, successors, seed=None)


def test_regime_transition_and_joint_chain_by_hand():
    np.testing.assert_array_equal(regime_transition(3, 0.3), [[0.7, 0.15, 0.15], [0.15, 0.7, 0.15],
                                                              [0.15, 0.15, 0.7]])
    chain = tiny_regime_chain()
    t = chain.joint_transition
    # (regime 1, letter C) -> (regime 0, letter D): A(1, 0) P_0(C, D) = 0.2 * 0.45
    assert t[1 * 3 + 1, 0 * 3 + 2] == pytest.approx(0.2 * 0.45, abs=1e-15)
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=0, atol=1e-12)
    bigrams = np.zeros((3, 3))
    for r in range(2):
        for s in range(2):
            bigrams += chain.stationary[r][:, None] * chain.regime_transition[r, s] * chain.transitions[s]
    np.testing.assert_allclose(chain.letter_bigrams, bigrams, rtol=0, atol=1e-15)
    assert chain.valid.tolist() == [[True, True, True], [True, True, True], [True, True, True]]
    assert make_regime_chain(regimes=2, seed=3).valid.sum() < 2 * 3 * K  # sparse: at most the two regimes' sets


def test_conditional_entropy_by_hand():
    """Counts [[2, 1], [1, 0]]: f(y | A) = (2/3, 1/3) on 3/4 of the bigrams, f(A | C) = 1 on 1/4."""
    expected = 0.5 * math.log(3 / 2) + 0.25 * math.log(3)
    counts = np.array([[2, 1], [1, 0]])
    assert conditional_entropy(counts) == pytest.approx(expected, rel=1e-12)
    assert conditional_entropy(counts / 4) == pytest.approx(expected, rel=1e-12)  # probabilities as well
    batch = conditional_entropy(np.stack([counts, np.diag([5, 5]), np.zeros((2, 2))]))
    assert batch[:2].tolist() == pytest.approx([expected, 0.0]) and math.isnan(batch[2])
    first_order = make_markov_chain(seed=4)  # for one regime it is the entropy rate
    assert as_regime_chain(first_order).conditional_entropy == pytest.approx(first_order.entropy_rate, rel=1e-12)


def test_each_regime_is_drawn_like_a_first_order_chain_and_psi_is_stationary():
    chain = make_regime_chain(regimes=3, switch=0.1, successors=2, seed=7, mass=0.99)
    assert chain.transitions.shape == (3, K, K) and chain.transitions.dtype == np.float64
    np.testing.assert_array_equal(chain.transitions[0], make_markov_chain(2, 7, 0.99).transition)
    for p, regime in zip(chain.transitions, chain.successors):
        for i, successors in enumerate(regime):
            assert len(successors) == 2 and p[i, successors].sum() == pytest.approx(0.99, abs=1e-12)
            assert np.all(np.delete(p[i], successors) == (1 - 0.99) / (K - 2))
    assert not np.array_equal(chain.transitions[0], chain.transitions[1])
    psi = chain.stationary.ravel()
    np.testing.assert_allclose(psi @ chain.joint_transition, psi, rtol=0, atol=1e-12)
    assert psi.sum() == pytest.approx(1.0, abs=1e-12) and (psi >= 0).all()
    assert chain.joint_entropy_rate < chain.conditional_entropy  # the letters' rate lies below both


def test_same_seed_same_chain_and_records_other_seed_differs():
    chain, again, other = make_regime_chain(seed=3), make_regime_chain(seed=3), make_regime_chain(seed=4)
    assert chain.to_json() == again.to_json()
    assert not np.array_equal(chain.transitions, other.transitions)
    records = sample_records(chain, 20, 100, seed=5)
    assert records == sample_records(again, 20, 100, seed=5)
    assert records != sample_records(chain, 20, 100, seed=6)
    assert len(records) == 20 and all(len(r) == 100 and set(r) <= set(STANDARD_AMINO_ACIDS) for r in records)


def test_samples_switch_at_rate_rho_and_have_the_stationary_letter_bigrams():
    chain = make_regime_chain(regimes=4, switch=0.05, seed=11)
    states = sample_states(chain, 400, 1000, seed=12)
    regimes, letters = states // K, states % K
    assert (regimes[:, 1:] != regimes[:, :-1]).mean() == pytest.approx(0.05, abs=0.003)
    counts = np.zeros((K, K))
    np.add.at(counts, (letters[:, :-1].ravel(), letters[:, 1:].ravel()), 1)
    assert 0.5 * np.abs(counts / counts.sum() - chain.letter_bigrams).sum() < 0.03
    first_order = chain.stationary[0].sum() ** -1 * chain.stationary[0][:, None] * chain.transitions[0]
    assert 0.5 * np.abs(first_order - chain.letter_bigrams).sum() > 0.2  # the bound above is not trivially met
    first = sample_states(chain, 20000, 1, seed=13).ravel()
    assert 0.5 * np.abs(np.bincount(first, minlength=4 * K) / first.size - chain.stationary.ravel()).sum() < 0.05
    assert "".join(sample_records(chain, 3, 50, seed=12)[0]) == "".join(
        STANDARD_AMINO_ACIDS[i] for i in sample_states(chain, 3, 50, seed=12)[0] % K)


def test_json_round_trips_exactly():
    chain = make_regime_chain(regimes=3, switch=0.2, successors=4, seed=31, mass=0.9)
    data = json.loads(json.dumps(chain.to_json(), indent=1))
    back = RegimeChain.from_json(data, source="test")
    assert np.array_equal(back.transitions, chain.transitions) and np.array_equal(back.stationary, chain.stationary)
    assert back.to_json() == chain.to_json() and back.seed == 31 and back.switch == 0.2
    assert set(data) == {"format", "kind", "alphabet", "seed", "regimes", "switch", "transitions", "successors",
                         "stationary", "joint_entropy_rate_nats", "letter_conditional_entropy_nats"}


def _row_not_stochastic(data):
    data["transitions"][1][2][0] += 0.01


def _regime_count_disagrees(data):
    data["regimes"] = 3


def _too_few_successor_lists(data):
    data["successors"] = data["successors"][:1]


def _switch_above_one(data):
    data["switch"] = 1.5


def _switch_negative(data):
    data["switch"] = -0.1


def _no_regimes(data):
    data["regimes"] = 0


def _psi_not_stationary(data):
    data["stationary"] = [[1 / (2 * K)] * K] * 2


def _psi_flat(data):
    data["stationary"] = [x for row in data["stationary"] for x in row]


def _successor_out_of_range(data):
    data["successors"][1][5] = [0, K]


def _entropy_edited(data):
    data["joint_entropy_rate_nats"] += 0.1


def _one_regime_switching(data):
    data.update(regimes=1, transitions=data["transitions"][:1], successors=data["successors"][:1])


@pytest.mark.parametrize("corrupt,key", [
    (_row_not_stochastic, r"transitions\[1\] row 2 sums"), (_regime_count_disagrees, "regimes is 3, but transitions"),
    (_too_few_successor_lists, "regimes is 2, but successors"), (_switch_above_one, "switch must be"),
    (_switch_negative, "switch must be"), (_no_regimes, "regimes must be"),
    (_psi_not_stationary, "stationary is not stationary"), (_psi_flat, "stationary must be 2 lists"),
    (_successor_out_of_range, r"successors\[1\] row 5"), (_entropy_edited, "joint_entropy_rate_nats"),
    (_one_regime_switching, "switch is 0.1 with regimes 1"),
])
def test_invalid_chain_is_refused_naming_the_key(corrupt, key):
    data = make_regime_chain(regimes=2, switch=0.1, seed=41).to_json()
    corrupt(data)
    with pytest.raises(ChainError, match=f"^bad.json: {key}"):
        RegimeChain.from_json(data, source="bad.json")


def test_load_chain_reads_either_family_by_its_kind(tmp_path):
    regime, markov = make_regime_chain(seed=2), make_markov_chain(seed=2)
    write_synthetic(tmp_path / "regime", regime, sample_records(regime, 2, 10, seed=0))
    write_synthetic(tmp_path / "markov", markov, sample_records(markov, 2, 10, seed=0))
    assert isinstance(load_chain(tmp_path / "regime"), RegimeChain)
    assert load_chain(tmp_path / "regime").to_json() == regime.to_json()
    assert isinstance(load_chain(tmp_path / "markov"), MarkovChain)
    assert (tmp_path / "regime" / "chain.fasta").read_text().startswith(">regime_2_00000\n")
    (tmp_path / "other.json").write_text(json.dumps({**regime.to_json(), "kind": "hidden"}))
    with pytest.raises(ChainError, match="other.json: kind is 'hidden'"):
        load_chain(tmp_path / "other.json")


def run_cli(out: Path, *flags: str) -> int:
    return cli(["synthetic", "regime", "--out", str(out), "--records", "40", "--length", "300", *flags])


def test_cli_corpus_prepares_and_the_exact_judge_scores_it(tmp_path, capsys):
    out = tmp_path / "regime"
    assert run_cli(out, "--seed", "5") == 0
    assert "40 records, 12,000 letters" in capsys.readouterr().out
    chain = load_chain(out)
    assert chain.to_json() == make_regime_chain(seed=5).to_json()  # the defaults: R = 4, ρ = 0.05, K = 3
    with open(out / "chain.fasta") as f:
        docs = list(fasta_documents(f, out / "chain.fasta", ReadStats(), strict=True))
    assert docs == sample_records(chain, 40, 300, seed=6)
    cfg = PrepareConfig(inputs=[str(out / "chain.fasta")], out=str(tmp_path / "data"), tokenizer="protein",
                        seq_len=64, val_fraction=0.2, workers=1)
    assert prepare(cfg, log=lambda _: None)["sources"]["documents"] == 40
    tok = build_tokenizer("protein", iter(()))
    judge = load_exact_judge(f"markov:{out}", tok)
    summary = judge.summarise([judge.score(tok.encode(doc)) for doc in docs], rounds=100)
    regimes = sample_states(chain, 40, 300, seed=6) // K  # the paths the records were drawn along
    sampled = 63 * (regimes[:, 1:] != regimes[:, :-1]).mean()
    assert summary["switches_per_64"] == pytest.approx(sampled, abs=0.15)  # the posterior recovers the switches
    assert summary["switches_per_64"] == pytest.approx(63 * 0.05, abs=0.5) and summary["invalid_rate"] < 0.005
    assert chain.joint_entropy_rate - 0.3 < summary["nll_per_letter"] < chain.joint_entropy_rate + 0.05
    assert summary["conditional_entropy"] == pytest.approx(judge.chain_conditional_entropy, abs=0.1)


@pytest.mark.parametrize("flags,flag", [
    (["--switch", "1.5"], "--switch"), (["--switch", "0"], "--switch"), (["--regimes", "0"], "--regimes"),
    (["--regimes", "1"], "--switch"), (["--successors", "21"], "--successors"), (["--mass", "0"], "--mass"),
])
def test_cli_bad_arguments_exit_2_naming_the_flag(tmp_path, capsys, flags, flag):
    assert run_cli(tmp_path / "regime", *flags) == 2
    assert flag in capsys.readouterr().err and not (tmp_path / "regime").exists()


def test_one_regime_from_the_cli_is_a_first_order_chain(tmp_path):
    assert run_cli(tmp_path / "one", "--regimes", "1", "--switch", "0", "--seed", "3") == 0
    chain, first_order = load_chain(tmp_path / "one"), make_markov_chain(seed=3)
    np.testing.assert_array_equal(chain.transitions[0], first_order.transition)
    np.testing.assert_allclose(chain.stationary[0], first_order.stationary, rtol=0, atol=1e-12)
    assert joint_transition(chain.regime_transition, chain.transitions).shape == (K, K)
