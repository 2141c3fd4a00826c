#!/usr/bin/env bash
# A well-behaved client beside stalled readers, slow readers and slowloris
# clients, through duplicator, haproxy and nginx (stream). The work is in
# hostile.py; see `hostile.sh --help`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v python3 >/dev/null || { echo "hostile.sh: python3 is required" >&2; exit 2; }
exec python3 "$here/hostile.py" "$@"
