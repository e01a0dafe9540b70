"""``bash launch/recipes/protein/protein.sh`` end to end on a tiny FASTA of synthetic families (no Debian download): the split
keeps families apart and counts what it skipped, every stage runs, and the table carries the protein metrics."""
import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT
from tests.proteins import write_families

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs2 is not installed "
                                 "(launch/test.sh installs it)")]

TINY = "model.size=unit train.eval_batches=1 tracking.backend=none train.eval_every={n} train.checkpoint_every={n}"


def test_the_recipe_runs_every_stage_on_a_tiny_fasta(tmp_path):
    family_of = write_families(tmp_path / "families.fasta", families=60, members=8, seed=2)
    with open(tmp_path / "families.fasta", "a") as f:
        f.write(">odd\nMKVJLA" + "A" * 40 + "\n>long\n" + "MKVL" * 80 + "\n")  # J: not a letter; 320 > 210
    steps = f"train.max_steps=10 train.sample_every=10 data.batch_size=4 {TINY.format(n=10)}"
    env = {**os.environ, "FASTA": str(tmp_path / "families.fasta"), "OUT": str(tmp_path / "run"),
           "RESULTS": str(tmp_path / "results"), "RANKS": "1", "MAX_LENGTH": "210", "TEACHER_SET": steps,
           "FAMILIES": "1000", "FAMILY_IDENTITY": "0.2",  # more than there are: all kept, the settings recorded
           "JUDGE_SET": steps, "DISTILL_SET": f"train.max_steps=3 train.sample_every=3 distill.rollout_rows=8 distill.unfreeze_blocks=1 "
                                              f"{TINY.format(n=3)}",
           "EVALUATE_SET": "num_samples=12 batch_size=12 teacher_steps=[4,16] student_steps=[4,16] control_steps=16 "
                           "bootstrap_rounds=50 control_search_samples=4 control_search_rounds=1 tracking.backend=none"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "recipes" / "protein" / "protein.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = tmp_path / "results"
    record = json.loads((results / "split.json").read_text())
    assert [record["settings"][k] for k in ("families", "family_identity", "identity")] == [1000, 0.2, 0.3]
    split = record["counts"]
    assert (split["outside_alphabet"], split["too_long"], split["kept"]) == (1, 1, 480)
    sequences = {name: [line for line in (tmp_path / "run" / "split" / name).read_text().splitlines()
                        if not line.startswith(">")] for name in ("train.fasta", "val.fasta")}
    assert sequences["val.fasta"]
    assert {family_of[s] for s in sequences["train.fasta"]}.isdisjoint(family_of[s] for s in sequences["val.fasta"])
    rows = json.loads((results / "results.json").read_text())["rows"]
    assert [(r["model"], r["steps"]) for r in rows] == [("held-out text", None), ("teacher", 4), ("teacher", 16),
                                                        ("student", 4), ("student", 16), ("teacher", 16)]
    for r in rows:
        assert r["gen_ppl"] > 1 and 0 <= r["protein_low_complexity"] <= 1 and r["protein_clusters_per_100"] > 0
    assert rows[0]["protein_clusters_per_100"] < 100  # held-out rows of 60 families repeat families
    table = (results / "results.md").read_text()
    assert "AA composition KL" in table and "clusters / 100 (50 % id.)" in table
    for plot in ("genppl", "composition_kl", "low_complexity", "clusters_per_100"):
        assert (results / f"{plot}_vs_nfe.png").is_file()
    stages = [line.split("\t")[0] for line in (results / "timings.tsv").read_text().splitlines()]
    assert stages == ["split", "prepare", "teacher", "judge", "distill", "evaluate"]
