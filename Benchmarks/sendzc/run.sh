#!/usr/bin/env bash
# Build sendzc into a temp dir (never into the tree) and run it.
# Usage: bash Benchmarks/sendzc/run.sh [sendzc options]   (default: -t 1 -r 3)
# Needs: a C compiler, liburing-dev, kernel >= 6.2.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${CC:-cc}" -O2 -Wall -Wextra -o "$tmp/sendzc" "$here/sendzc.c" -luring -lpthread
if [ "$#" -eq 0 ]; then set -- -t 1 -r 3; fi
"$tmp/sendzc" "$@"
