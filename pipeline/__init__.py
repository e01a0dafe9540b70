"""Everything between prepared shards and a judged sample, grouped by role:

- ``stages/``: one module per command a user runs (pre-train, distil, convert, import an MDLM, sample,
  evaluate, sweep);
- ``runtime/``: what the training stages share (engines, the loop, checkpoints, EMA, data, ranks, tracking);
- ``measure/``: measurements (the judges, scaling fits, the memory planner, plots, text rendering);
- ``config.py`` (the typed configs of the training and evaluation stages) and ``bundle.py`` (the inference-bundle
  format, written and read) at the top.

Imports run downwards only: stages -> runtime -> measure -> the top modules -> ``models/``. Stages may import
one another; the top modules import only ``models/``, ``data_prep.config`` (the typed-YAML machinery) and
``data_prep.atomic`` (atomic file writes); ``runtime/`` reads shards in the format ``data_prep/shards.py``
defines. ``python -m pipeline COMMAND`` (``__main__.py``) runs the commands.
"""
