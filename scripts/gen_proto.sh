#!/usr/bin/env bash
# Regenerates the betterproto code under python/aioray/_proto from proto/.
# With --check, generates into a scratch folder and fails if the committed code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
out=python/aioray/_proto
if [[ "${1:-}" == "--check" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
python -m grpc_tools.protoc -I proto --python_betterproto_out="$out" proto/aioray/v1/*.proto
if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r -x __pycache__ "$out" python/aioray/_proto; then
    echo "generated protocol code is stale: run 'make proto' and commit the result" >&2
    exit 1
  fi
  echo "generated protocol code is up to date"
fi
