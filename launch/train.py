"""The training launcher: ``deepspeed [--num_gpus N] launch/train.py --config FILE [--set k=v ...]`` is
``python -m pipeline train`` on every rank (``pipeline/stages/train.py``); the project installed first
(``pip install -e .``, as ``launch/setup_env.sh`` does)."""
import sys

from pipeline.cli import run

if __name__ == "__main__":
    run(["train", *sys.argv[1:]])
