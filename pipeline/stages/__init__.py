"""One module per command a user runs: ``train`` (``pretrain`` or ``distill``, by the config's stage), ``convert``
and ``mdlm_import`` (checkpoint or public MDLM -> bundle), ``sample``, ``evaluate`` and ``sweep``. A stage is a
function with a thin CLI around it; stages may import ``runtime``, ``measure``, the top modules and each other.
"""
