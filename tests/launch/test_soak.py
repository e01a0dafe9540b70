"""The kill soak's short CI case: one pre-training job on 2 ranks killed while it writes a checkpoint (a moment
every run has, unlike a random one in a short run), rerun to the end, equal bit for bit to the uninterrupted run
(the full soak: python launch/bench/soak.py)."""
import json

import pytest

from launch.bench.soak import main

pytestmark = pytest.mark.distributed


def test_one_killed_trial_resumes_to_the_uninterrupted_run(tmp_path):
    assert main(["--trials", "1", "--stages", "pretrain", "--pretrain-steps", "15", "--seed", "3",
                 "--during-checkpoint", "--out", str(tmp_path), "--json", str(tmp_path / "soak.json")]) == 0
    (record,) = json.loads((tmp_path / "soak.json").read_text())["trials"]
    assert record["during_checkpoint"] and record["hit"] and record["reruns"] >= 1 and record["passed"], record
