"""Ingest + preprocess throughput on a HAM10000-sized synthetic set (600x450 RGB JPEG + PNG masks).

    .venv/bin/python bench/data.py [--n 2000] [--workers 2] [--root /tmp/medloc_bench_ham]

The set is generated once into ``--root`` (reused when its truth file matches) and not counted in the
timing. Prints images/s for ingest (decode + sha256 + mask box + checks) and for ingest + preprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from medloc_core.data.ingest import read_dataset
from medloc_core.data.preprocess import preprocess
from medloc_core.data.synth import TRUTH_FILE, generate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="/tmp/medloc_bench_ham")
    args = parser.parse_args()

    root = Path(args.root)
    truth_file = root / TRUTH_FILE
    cached = truth_file.exists() and json.loads(truth_file.read_text()).get("n") == args.n
    if not cached:
        t0 = time.perf_counter()
        generate("ham10000", root, n=args.n, seed=args.seed, workers=args.workers)
        print(f"generated {args.n} images in {time.perf_counter() - t0:.1f} s")

    cpu0 = os.times()
    t0 = time.perf_counter()
    result = read_dataset("ham10000", root, workers=args.workers, progress=False)
    t_ingest = time.perf_counter() - t0
    t1 = time.perf_counter()
    prepared, _ = preprocess(result.records, seed=args.seed)
    t_prep = time.perf_counter() - t1
    cpu1 = os.times()
    cpu = sum(
        getattr(cpu1, f) - getattr(cpu0, f) for f in ("user", "system", "children_user", "children_system")
    )
    n = len(prepared)
    assert n == args.n and len(result.quarantine) == 0
    print(f"cpus={os.cpu_count()} workers={args.workers} images={n}")
    print(f"ingest: {t_ingest:.2f} s = {n / t_ingest:.0f} images/s")
    print(f"preprocess: {t_prep:.2f} s")
    print(f"ingest + preprocess: {n / (t_ingest + t_prep):.0f} images/s (wall clock)")
    # CPU time does not depend on other processes competing for the cores: a load-independent figure.
    print(f"CPU time: {1000 * cpu / n:.1f} ms/image = {n / cpu:.0f} images/s per fully available core")


if __name__ == "__main__":
    main()
