"""``python -m pipeline COMMAND [ARGS]`` (the commands: ``pipeline/cli.py``)."""
from pipeline.cli import run

if __name__ == "__main__":
    run()
