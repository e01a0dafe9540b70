"""The discriminator probe: its statistics by hand, and on a barely trained teacher (whose 4-step samples break
most transitions) the plain classifier tells fakes from data far better than chance."""
from __future__ import annotations

import json

import pytest
import torch

from launch.bench.probe_discriminator import auc, main, spearman
from tests.pipeline.stages.test_exact_evaluation import chain_corpus, markov_teacher  # noqa: F401  (fixtures)


def test_auc_and_spearman_by_hand():
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0])) == 0.5
    assert auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5  # a tie counts one half
    assert spearman(torch.tensor([1.0, 5.0, 9.0]), torch.tensor([0.1, 0.2, 0.3])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 5.0, 9.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


@pytest.mark.distributed
def test_the_probe_separates_a_weak_teachers_samples_from_data(chain_corpus, markov_teacher, tmp_path):  # noqa: F811
    out = tmp_path / "probe.json"
    assert main(["--teacher", str(markov_teacher), "--data", str(chain_corpus / "data"), "--chain",
                 str(chain_corpus / "corpus"), "--steps", "4", "--samples", "64", "--held-out", "32",
                 "--iterations", "80", "--batch", "16", "--lr", "1e-3", "--unfreeze-blocks", "2",
                 "--eval-tau", "0.2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    classifier = results["classifier"]["all positions"]
    low, high = classifier["auc_interval"]
    assert low > 0.7 and low <= classifier["auc"] <= high  # far from chance (0.5)
    assert set(results["didi"]) == {"tau_0.2"} and 0.0 <= results["didi"]["tau_0.2"]["auc"] <= 1.0
