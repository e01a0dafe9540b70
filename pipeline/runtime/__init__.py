"""What every training stage shares: model and engine construction, the loop's guard and schedule, checkpoints
and the weights inside them, the EMA, the data loader, ranks and collectives, preemption, keyed randomness and
tracking. Imports ``measure``, the top modules of ``pipeline``, ``models`` and ``data_prep.shards``; never
``stages``.
"""
