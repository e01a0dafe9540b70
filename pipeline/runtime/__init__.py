"""What every training stage shares: the training loop (``trainer``), model and engine construction, the loop's
guard and schedule, the objective and its validation, console logging, checkpoints and the weights inside them,
the EMA, the data loader, ranks and collectives, preemption, keyed randomness and tracking. Imports ``measure``,
the top modules of ``pipeline``, ``models``, ``data_prep.shards`` and ``data_prep.tokenizers``; never
``stages``.
"""
