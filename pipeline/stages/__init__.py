"""One module per command a user runs: ``pretrain`` and ``distill`` (through ``launch/train.py``), ``convert``
and ``mdlm_import`` (checkpoint or public MDLM -> bundle), ``sample``, ``evaluate`` and ``sweep``. A stage is a
function with a thin CLI around it; stages may import ``runtime``, ``measure``, the top modules and each other.
"""
