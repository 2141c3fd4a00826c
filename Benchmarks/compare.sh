#!/usr/bin/env bash
# Side-by-side comparison of duplicator, a direct connection, haproxy, nginx
# (stream) and socat. The work is in compare.py; see `compare.sh --help`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v python3 >/dev/null || { echo "compare.sh: python3 is required" >&2; exit 2; }
exec python3 "$here/compare.py" "$@"
