#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then runs pytest. Extra arguments go to pytest (e.g. -m "not distributed").
source "$(dirname "$0")/setup_env.sh"
exec python -m pytest "$@"
