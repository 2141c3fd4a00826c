#!/usr/bin/env bash
# The accesses Swift still checks for exclusivity at run time in the release
# build of the Ring and Duplicator modules: each `begin_access [dynamic]` of
# their optimised SIL, counted by what it accesses (a class's stored
# property, a global). Each one costs a swift_beginAccess call every time it
# runs; BENCHMARKS.md ("Exclusivity checks on the hot path") says why the
# per-request ones are gone and how to keep them so.
#
#   Benchmarks/dynamic_accesses.sh [FUNCTION_REGEX]    (after `swift build -c release`)
#
# With FUNCTION_REGEX, also the accesses of each function whose demangled
# name matches it (e.g. 'Session\.(received|sent)|Worker\.run').
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
modules=.build/release/Modules
[[ -d $modules ]] || { echo "dynamic_accesses.sh: run 'swift build -c release' first" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
maps=(-Xcc -fmodule-map-file=Sources/CLiburing/module.modulemap -Xcc -fmodule-map-file=Sources/CLinuxSystem/module.modulemap
      -Xcc -fmodule-map-file=.build/checkouts/Yams/Sources/CYaml/include/module.modulemap)
for module in Ring Duplicator; do
    swiftc -O -wmo -parse-as-library -module-name "$module" -emit-sil -I "$modules" "${maps[@]}" \
        Sources/"$module"/*.swift -o "$work/$module.sil" 2>/dev/null
done
python3 - "${1:-}" "$work"/Ring.sil "$work"/Duplicator.sil <<'PY'
import collections, re, subprocess, sys
pattern, files = sys.argv[1], sys.argv[2:]
total, by_function = collections.Counter(), collections.defaultdict(collections.Counter)
for path in files:
    function, defined = None, {}
    for line in open(path):
        if m := re.match(r"^sil .*?@(\S+) :", line):
            function, defined = m.group(1), {}
        elif m := re.match(r"^\s+(%\d+) = (ref_element_addr|global_addr)\b.*?[#@]([\w.$]+)", line):
            defined[m.group(1)] = m.group(3)
        elif m := re.search(r"begin_access \[(\w+)\] \[dynamic\][^%]*(%\d+)", line):
            what = f"{m.group(1):6} {defined.get(m.group(2), '(other)')}"
            total[what] += 1
            by_function[function][what] += 1
print("dynamic accesses in the SIL (a place in the code each, not a count at run time):")
for what, count in total.most_common():
    print(f"{count:5}  {what}")
if pattern:
    names = list(by_function)
    demangled = subprocess.run(["swift", "demangle", "--simplified"], input="\n".join(names),
                               capture_output=True, text=True).stdout.splitlines()
    for name, readable in zip(names, demangled):
        if re.search(pattern, readable):
            print(f"\n{readable}")
            for what, count in by_function[name].most_common():
                print(f"{count:5}  {what}")
PY
