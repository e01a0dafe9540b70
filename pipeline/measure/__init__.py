"""Measurements: Gen-PPL judges and their statistics, scaling-law fits, the per-rank memory planner, plots,
sampled text rendered for people, and the machine a result was measured on. Imports only the top modules of
``pipeline``, ``models`` and ``data_prep.tokenizers``; never ``runtime`` or ``stages``.
"""
