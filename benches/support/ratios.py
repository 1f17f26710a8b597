#!/usr/bin/env python3
"""Ratios from the criterion results of `cargo bench --bench ops`.

Reads <target>/criterion/**/new/{benchmark,estimates}.json (target = $CARGO_TARGET_DIR or
./target) and prints a markdown table: for every workload, value type and thread count, the
time of leasecache's batch divided by each other cache's (below 1 means leasecache is faster),
and leasecache's throughput in Mops/s.

    python3 benches/support/ratios.py [criterion-dir]
"""
import json
import os
import sys

ORDER = ["get_hit", "miss", "purge", "zipf_read_mostly", "write_heavy"]
OTHERS = ["quick_cache", "moka", "dashmap"]


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    results = {}
    for dirpath, _, files in os.walk(root):
        if not dirpath.endswith(os.sep + "new") or "benchmark.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        elements = (bench.get("throughput") or {}).get("Elements")
        ns = est["median"]["point_estimate"]
        results[(bench["group_id"], bench["function_id"])] = (ns, elements)
    if not results:
        sys.exit(f"no criterion results under {root}")
    groups = sorted({g for g, _ in results},
                    key=lambda g: (ORDER.index(g.split("/")[0]) if g.split("/")[0] in ORDER
                                   else 99, g))
    print("| workload | values | threads | leasecache Mops/s | "
          + " | ".join(f"time vs {o}" for o in OTHERS) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(OTHERS))
    for g in groups:
        workload, values, threads = (g.split("/") + ["", ""])[:3]
        lc = results.get((g, "leasecache"))
        if lc is None:
            continue
        ns, elements = lc
        mops = f"{elements / ns * 1e3:.1f}" if elements else "-"
        cells = []
        for o in OTHERS:
            other = results.get((g, o))
            cells.append(f"{ns / other[0]:.2f}" if other else "-")
        print(f"| {workload} | {values} | {threads} | {mops} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
