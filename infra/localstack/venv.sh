#!/usr/bin/env bash
# Creates the LocalStack venv (default .venv-localstack) from infra/localstack/requirements.txt.
# localstack-core 2026.3.0 uses Python 3.12+ syntax (it fails on 3.11), so this needs a
# Python 3.13: $PYTHON313 if set, else pyenv's newest 3.13, else python3.13 on PATH.
set -euo pipefail

venv="${1:-.venv-localstack}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

find_python() {
    if [[ -n "${PYTHON313:-}" ]]; then
        echo "$PYTHON313"
        return
    fi
    local candidate found=""
    # Newest last: sort -V orders 3.13.0 < 3.13.9 < 3.13.10.
    while IFS= read -r candidate; do
        [[ -x "$candidate" ]] && found="$candidate"
    done < <(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 2>/dev/null | sort -V)
    if [[ -z "$found" ]]; then
        found="$(command -v python3.13 || true)"
    fi
    echo "$found"
}

python="$(find_python)"
if [[ -z "$python" ]] || ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
    cat >&2 <<MSG
error: LocalStack needs Python 3.13, and none was found${python:+ (tried $python)}.
  Looked at: \$PYTHON313, ${PYENV_ROOT:-$HOME/.pyenv}/versions/3.13*/bin/python3.13, python3.13 on PATH.
  Install one (e.g. \`pyenv install 3.13\`) or point PYTHON313 at it:
    make test-localstack PYTHON313=/path/to/python3.13
MSG
    exit 1
fi

echo "==> Installing LocalStack's host runtime into $venv with $python ($("$python" --version 2>&1)); about a minute on a fresh machine"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
# Fail here, not in the middle of a test run, if the runtime does not import.
"$venv/bin/python" -c 'import localstack.runtime.main, localstack.version as v; print("    localstack-core", v.__version__)'
