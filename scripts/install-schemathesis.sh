#!/usr/bin/env bash
# Installs schemathesis (PyPI), which tests/it/api/conformance.rs runs against the live API,
# into a virtualenv under ~/.cache/topk (once; later runs find it). Prints the CLI's path.
#
# Env: TOPK_SCHEMATHESIS_VENV (default ~/.cache/topk/schemathesis-venv).
set -euo pipefail
VERSION=4.32.5
VENV=${TOPK_SCHEMATHESIS_VENV:-$HOME/.cache/topk/schemathesis-venv}
CLI="$VENV/bin/schemathesis"
if [ -x "$CLI" ] && "$CLI" --version 2>/dev/null | grep -q "version $VERSION\$"; then
  echo "$CLI"
  exit 0
fi
echo "installing schemathesis $VERSION into $VENV" >&2
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
"$CLI" --version >&2
echo "$CLI"
