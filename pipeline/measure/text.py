"""Turning sampled token ids into readable text: BOS dropped, EOS as a paragraph break, [MASK] shown, never decoded."""
from __future__ import annotations

from data_prep.tokenizers import Tokenizer

MASK_TEXT = "[MASK]"


def render(ids: list[int], tok: Tokenizer) -> tuple[str, int]:
    """(text, number of [MASK] tokens left)."""
    if ids and ids[0] == tok.bos_id:
        ids = ids[1:]
    parts, run, masks = [], [], 0
    for i in ids + [tok.eos_id]:
        if i == tok.mask_id or i == tok.eos_id or i == tok.bos_id:
            parts.append(tok.decode(run))
            run = []
            if i == tok.mask_id:
                masks += 1
                parts.append(MASK_TEXT)
            elif i == tok.eos_id:
                parts.append("\n\n")
        else:
            run.append(i)
    return "".join(parts[:-1]), masks
