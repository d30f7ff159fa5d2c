#!/usr/bin/env bash
# The test suite: unit tests on handmade fixtures and integration tests on the real data set.
# Extra arguments go to pytest (e.g. -m "not slow").
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check . && ruff format --check . || { echo "ruff: run \`ruff format . && ruff check --fix .\`" >&2; exit 1; }
python -m pytest -q "$@"
