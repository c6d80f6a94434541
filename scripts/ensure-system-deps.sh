#!/usr/bin/env bash
# Makes sure the system packages tether's suite, demo and benchmarks need are present:
# a MariaDB server binary (private throwaway servers), redis-server (private ones for the
# budget's tests), mysqlclient's build dependencies
# and Python's venv module. Installs them with apt-get when running as root on Debian;
# otherwise stops with a message naming the packages.
set -euo pipefail

PYTHON=${PYTHON:-python3}
missing=()

have_mariadbd() {
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || [ -x /usr/libexec/mariadbd ]
}
have_install_db() {
    command -v mariadb-install-db >/dev/null 2>&1 || command -v mysql_install_db >/dev/null 2>&1
}
have_client_headers() {
    command -v pkg-config >/dev/null 2>&1 \
        && { pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null; }
}
have_python_headers() {
    "$PYTHON" - <<'PY' 2>/dev/null
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
}

have_mariadbd && have_install_db || missing+=(mariadb-server)
have_client_headers || missing+=(libmariadb-dev pkg-config)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
have_python_headers || missing+=(python3-dev)
"$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
# The fleet-wide budget's tests start private redis-server processes (never the machine's).
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)

# `ensure-system-deps.sh bench`: also the HTTP load generator for the web benchmark and
# valgrind for the cold-cache counts.
if [ "${1:-}" = "bench" ]; then
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian's package starts the machine-wide server on install where it can; tether never
    # uses it (tests and the demo start private servers), so leave it as the package left it.
    exit 0
fi

echo "tether needs these Debian packages: ${missing[*]}" >&2
echo "install them with: sudo apt-get install ${missing[*]}" >&2
exit 1
