#!/usr/bin/env bash
# Install localai (editable) into the active Python environment.
#   scripts/setup.sh         the tool
#   scripts/setup.sh --dev   the tool and its test dependencies
# Set PYTHON to choose the interpreter, TORCH_SPEC to choose the PyTorch build
# installed when none is present (default: torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
extras=""
case "${1:-}" in
    "") ;;
    --dev) extras="[dev]" ;;
    -h|--help) sed -n '2,6s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (use --dev or --help)" >&2; exit 2 ;;
esac

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    # Install a pinned torch first so the dependency resolver does not pick a
    # different (and possibly multi-GB) build on its own.
    "$PYTHON" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".${extras}"

# pyenv keeps shims for console scripts: refresh them so `localai` is on PATH
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash
fi
command -v localai >/dev/null || echo "note: add $("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))') to PATH to run localai" >&2
