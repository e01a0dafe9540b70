"""Measurements: Gen-PPL judges and their statistics, the exact judge of a synthetic corpus, scaling-law fits,
the per-rank memory planner, plots, sampled text rendered for people, and the machine a result was measured on.
Imports only the top modules of ``pipeline``, ``models``, ``data_prep.tokenizers`` and ``data_prep.synthetic``
(the chain a synthetic corpus was drawn from); never ``runtime`` or ``stages``.
"""
