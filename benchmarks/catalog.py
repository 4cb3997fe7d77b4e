"""Large catalogs: build time, memory, query latency and recall of deccm's nearest-track indexes.

For each catalog size, SYNTHETIC track vectors (unit-norm points around 200 centres, like a
trained model's track vectors around its genres; 128 dims, the default latent size) are
searched with single-clip queries (k = 10, what the demo and ``deccm recommend`` ask):

* ``exact``: ``deccm.index.ExactIndex``, the blocked matmul every result in deccm uses;
* ``ivf nprobe=P``: ``deccm.index.IVFIndex`` (faiss-cpu, √M cells), approximate: recall@10
  is the share of the exact top-10 it returns, over the same queries.

Latency is per query, one at a time, after one warm-up query; p50 / p95 over --queries.
Memory is what the index holds (the vectors; faiss: its serialised size).

Usage: python benchmarks/catalog.py [--sizes 10000 100000 1000000] [--queries 200] [--nprobe 8 32 128]
       [--out FILE.json]   (numpy's BLAS and faiss use every core)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np

from deccm import safeio
from deccm.index import ExactIndex, IVFIndex


def vectors(m: int, d: int, seed: int, centres: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, m)]
    x += 0.7 * rng.standard_normal((m, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def latency(index: Any, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (Q, k), per-query seconds (Q,)), one query at a time."""
    index.search(q[:1], k)  # warm-up
    ids, secs = [], []
    for row in q:
        t0 = time.perf_counter()
        i, _ = index.search(row[None], k)
        secs.append(time.perf_counter() - t0)
        ids.append(i[0])
    return np.stack(ids), np.array(secs)


def run(sizes: list[int], n_queries: int, nprobes: list[int], dim: int, k: int) -> list[dict[str, Any]]:
    rows = []
    q = vectors(n_queries, dim, seed=1)
    for m in sizes:
        v = vectors(m, dim, seed=0)
        t0 = time.perf_counter()
        exact = ExactIndex(v)
        build = time.perf_counter() - t0
        truth, secs = latency(exact, q, k)
        rows.append({"tracks": m, "index": "exact", "build_s": build, "memory_mb": exact.vectors.nbytes / 2**20,
                     "p50_ms": 1e3 * np.median(secs), "p95_ms": 1e3 * np.percentile(secs, 95), "recall@10": 1.0})
        print(json.dumps(rows[-1]), flush=True)
        for nprobe in nprobes:
            import faiss

            t0 = time.perf_counter()
            ivf = IVFIndex(v, nprobe=nprobe)
            build = time.perf_counter() - t0
            ids, secs = latency(ivf, q, k)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth)]))
            rows.append({"tracks": m, "index": f"ivf nlist={ivf.nlist} nprobe={ivf.nprobe}", "build_s": build,
                         "memory_mb": len(faiss.serialize_index(ivf.index)) / 2**20,
                         "p50_ms": 1e3 * np.median(secs), "p95_ms": 1e3 * np.percentile(secs, 95), "recall@10": recall})
            print(json.dumps(rows[-1]), flush=True)
        del v, exact
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| tracks | index | build (s) | memory (MB) | p50 (ms) | p95 (ms) | recall@10 |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tracks']:,} | {r['index']} | {r['build_s']:.2f} | {r['memory_mb']:.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p95_ms']:.2f} | {r['recall@10']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    rows = run(args.sizes, args.queries, args.nprobe, args.dim, args.k)
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
          f"{args.queries} single queries, k = {args.k}, {args.dim} dims\n")
    print(to_markdown(rows))
    if args.out:
        safeio.write_json(args.out, {"rows": rows, "machine": platform.machine(), "cores": os.cpu_count()})


if __name__ == "__main__":
    main()
