"""Reads the counts of `perf stat -x,` output: the one parser of the Benchmarks scripts."""
import sys


def read_counts(path, tool):
    """{event name without its group: count}. "<not counted>" or "<not supported>"
    is not zero: stop with `tool`'s name, never read it as "no event"."""
    counts = {}
    for line in open(path):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[2]:
            name = fields[2].split(":")[-1]
            try:
                counts[name] = float(fields[0])
            except ValueError:
                sys.exit(f"{tool}: perf did not count {name} in {path}: {fields[0]}")
    return counts
