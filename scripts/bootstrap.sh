#!/usr/bin/env bash
# Prepare a fresh clone: Debian packages (when root), then .venv with Ensign and its test tools.
# Idempotent and quick when nothing changed; `make` calls it through a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: the server binaries the fleet tests run a real cluster with (and psql)
APT_PACKAGES=(openssl swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config postgresql)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "bootstrap: apt-get install ${missing[*]}" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "bootstrap: missing Debian packages (run as root to install): ${missing[*]}" >&2
    fi
fi

# Prefer the distribution's Python: a venv built on it can be used by other uids, which the
# cross-uid tests need (a pyenv under /root is not reachable for them).
PY=""
for cand in /usr/bin/python3 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PY="$cand"; break
    fi
done
[[ -n "$PY" ]] || { echo "bootstrap: need Python >= 3.11 with venv" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# strict editable mode builds a link tree that mypy can follow (see ARCHITECTURE.md, tooling note)
.venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=strict

