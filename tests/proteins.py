"""Synthetic protein families for the protein tests: unrelated random ancestors, members that keep 80 % of their
ancestor's residues, so identity clustering at 30 % recovers the families."""
from __future__ import annotations

import random
from pathlib import Path

STANDARD = "ACDEFGHIKLMNPQRSTVWY"


def protein_families(families: int, members: int, seed: int = 0, lengths: tuple[int, int] = (60, 200),
                     keep: float = 0.8) -> dict[str, int]:
    """sequence -> family."""
    rng = random.Random(seed)
    out = {}
    for family in range(families):
        ancestor = [rng.choice(STANDARD) for _ in range(rng.randint(*lengths))]
        for _ in range(members):
            out["".join(c if rng.random() < keep else rng.choice(STANDARD) for c in ancestor)] = family
    return out


def write_families(path: Path, families: int, members: int, seed: int = 0) -> dict[str, int]:
    """Write the families as FASTA (``>fF_M``, 60 letters a line) and return sequence -> family."""
    found = protein_families(families, members, seed)
    with open(path, "w") as f:
        for k, (seq, family) in enumerate(found.items()):
            f.write(f">f{family}_{k}\n" + "".join(seq[i: i + 60] + "\n" for i in range(0, len(seq), 60)))
    return found
