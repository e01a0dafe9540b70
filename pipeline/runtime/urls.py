"""Where a dataset's files are: a directory, or a base URL that webdataset's ``gopen`` opens (``file://``,
``http(s)://`` through curl, ``pipe:`` commands with ``{}`` for the file name). Remote reads are retried with a
doubling delay; a checksum that does not match counts as a failed read (a truncated or changed download)."""
from __future__ import annotations

import hashlib
import time

import webdataset as wds

from pipeline.config import is_remote

RETRY_DELAY_S = 1.0  # before the first retry; doubled for each further one


class FetchError(OSError):
    """A file could not be read whole, or did not match its checksum; the message names the URL."""


def resolve(location: str, name: str) -> str:
    """The URL (or path) of file ``name`` of the dataset at ``location``."""
    if location.startswith("pipe:"):
        return location.replace("{}", name)
    return location.rstrip("/") + "/" + name


def fetch(url: str, retries: int, expect_sha256: str | None = None) -> bytes:
    """The whole file at ``url``; remote URLs get ``retries`` more attempts after a failure."""
    attempts = 1 + (retries if is_remote(url) and not url.startswith("file:") else 0)
    problem = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
        try:
            with wds.gopen(url, "rb") as stream:
                data = stream.read()
        except (OSError, ValueError) as err:  # gopen's pipes raise OSError for a failed command
            problem = f"unreadable ({err.__class__.__name__}: {err})"
            continue
        if expect_sha256 is None:
            return data
        got = hashlib.sha256(data).hexdigest()
        if got == expect_sha256:
            return data
        problem = (f"sha256 {got[:16]}… of {len(data):,} bytes does not match the manifest's "
                   f"{expect_sha256[:16]}… (changed or damaged since it was prepared)")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    raise FetchError(f"{url}: {problem}{tries}")
