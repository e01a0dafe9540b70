#!/usr/bin/env bash
# bash launch/apt_install.sh PACKAGE...: install Debian packages with apt-get (as root, or through passwordless
# sudo), updating the package lists once if the first try fails; exits 2 with what to do when it cannot.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends "$@" > /dev/null 2>&1 \
  || { $SUDO apt-get update -q > /dev/null 2>&1 && $SUDO apt-get install -y -q --no-install-recommends "$@" > /dev/null 2>&1; } \
  || { echo "error: could not install Debian's $*: run as root or with passwordless sudo, or install them yourself" \
            "(apt-get install $*)" >&2; exit 2; }
