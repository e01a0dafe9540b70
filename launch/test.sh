#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then runs pytest. Extra arguments go to pytest (e.g. -m "not distributed").
source "$(dirname "$0")/setup_env.sh"
# the SLURM tests run a one-machine cluster (Debian's packages); where they cannot be installed, they are skipped
bash launch/slurm/local_cluster.sh install 2> /dev/null \
    || echo "SLURM packages not installable here: the SLURM tests will be skipped"
# the protein tests cluster with mmseqs2 (Debian's package); where it cannot be installed, they are skipped
command -v mmseqs > /dev/null || bash launch/apt_install.sh mmseqs2 2> /dev/null \
    || echo "mmseqs2 not installable here: the protein tests that cluster will be skipped"
exec python -m pytest "$@"
