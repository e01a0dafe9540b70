"""Rank-aware logging and progress that suits where the output goes."""
import logging

import pytest

from data_prep import logs


@pytest.fixture(autouse=True)
def restore():
    yield
    logs.setup(rank=0)


def emit(capsys, **setup):
    logs.setup(**setup)
    logger = logging.getLogger("pipeline.stages.somewhere")
    logger.info("hello")
    logger.warning("careful")
    return capsys.readouterr().err.splitlines()


def test_rank_zero_logs_plain_lines_and_named_warnings(capsys):
    assert emit(capsys, rank=0) == ["hello", "WARNING: careful"]


def test_other_ranks_log_only_warnings_with_their_rank(capsys):
    assert emit(capsys, rank=3) == ["rank 3: WARNING: careful"]


def test_all_ranks_prefixes_every_line(capsys):
    assert emit(capsys, rank=0, all_ranks=True) == ["rank 0: hello", "rank 0: WARNING: careful"]
    assert emit(capsys, rank=2, all_ranks=True) == ["rank 2: hello", "rank 2: WARNING: careful"]


def test_setup_twice_keeps_one_handler(capsys):
    logs.setup(rank=0)
    assert emit(capsys, rank=0) == ["hello", "WARNING: careful"]


def test_progress_off_a_terminal_is_plain_lines_without_carriage_returns(capsys):
    logs.setup(rank=0)
    bar = logs.progress(total=3, desc="pretrain")  # pytest's stderr is not a terminal
    assert isinstance(bar, logs.PlainProgress)
    bar.every_s = 3600.0
    bar.update()
    bar.set_postfix(loss="1.000")
    bar.update(2)  # the last step always reports
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == [err.splitlines()[0]] and err.startswith("pretrain: 3/3 (") and "loss=1.000" in err


def test_progress_on_other_ranks_is_silent(capsys):
    bar = logs.progress(total=2, desc="x", enabled=False)
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err == ""


def test_progress_of_unknown_length_reports_its_count_when_closed(capsys):
    with logs.progress(None, desc="shards") as bar:
        bar.every_s = 3600.0
        bar.update()
        bar.update()
    assert capsys.readouterr().err.startswith("shards: 2 (")
