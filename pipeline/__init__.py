"""Stages and their machinery: config, data loading, engines, training stages, checkpoints, tracking."""
