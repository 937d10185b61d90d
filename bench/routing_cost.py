#!/usr/bin/env python3
"""What finding a route costs with 1, 100 and 10,000 routes (``RoutingTable.match``).

Usage::

    python bench/routing_cost.py [--sizes 1,100,10000] [--json FILE]

For each size ``n`` it builds a :class:`wagi.routing.RoutingTable` the way a
worker does (``Route`` objects, declaration order) and times ``match``:

- **exact hit**: ``n`` exact routes ``/r/00000`` ...; every declared path is
  looked up in turn;
- **prefix hit**: ``n`` prefix routes ``/p/00000/...``; a path under each one
  (``/p/00042/x``) is looked up in turn, so the average is over every position
  in the table;
- **prefix hit, last**: the path under the prefix route tried last;
- **miss**: a path no route matches (a 404), in a table of ``n`` prefix routes.

No engine, no HTTP: it runs on any Python with wagi importable. Each figure is
the best of a few ``timeit`` repeats, in µs per ``match`` call.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wagi.routing import Route, RoutingTable  # noqa: E402

DEFAULT_SIZES = (1, 100, 10_000)
REPEATS = 3
CASES = ("exact hit", "prefix hit", "prefix hit, last", "miss")


def exact_table(n: int) -> tuple[RoutingTable[int], list[str]]:
    routes = [Route(f"/r/{i:05d}", i, (i, 0)) for i in range(n)]
    return RoutingTable(routes), [r.pattern for r in routes]


def prefix_table(n: int) -> tuple[RoutingTable[int], list[str]]:
    routes = [Route(f"/p/{i:05d}/...", i, (i, 0)) for i in range(n)]
    return RoutingTable(routes), [f"/p/{i:05d}/x" for i in range(n)]


def per_match_us(table: RoutingTable[int], expected: Mapping[str, int | None]) -> float:
    """Best-of-``REPEATS`` µs per ``table.match`` over the paths of ``expected``.

    Each path is checked once first: it must find the handler ``expected`` gives
    (``None``: no route).
    """
    for path, handler in expected.items():
        match = table.match(path)
        got = None if match is None else match.handler
        if got != handler:
            raise RuntimeError(f"{path}: matched {got!r}, expected {handler!r}")
    paths = list(expected)
    match = table.match

    def all_paths() -> None:
        for path in paths:
            match(path)

    timer = timeit.Timer(all_paths)
    loops, _ = timer.autorange()
    best = min(timer.repeat(repeat=REPEATS, number=loops))
    return best / loops / len(paths) * 1e6


def measure(sizes: Sequence[int]) -> dict[str, dict[int, float]]:
    """Case -> size -> µs per match."""
    results: dict[str, dict[int, float]] = {case: {} for case in CASES}
    for n in sizes:
        table, paths = exact_table(n)
        results["exact hit"][n] = per_match_us(table, {p: i for i, p in enumerate(paths)})
        table, paths = prefix_table(n)
        # At most 100 positions spread evenly over the table: enough for the average.
        step = max(1, n // 100)
        sample = {p: i for i, p in enumerate(paths) if i % step == 0}
        results["prefix hit"][n] = per_match_us(table, sample)
        last = table.prefixes[-1].handler
        results["prefix hit, last"][n] = per_match_us(table, {paths[last]: last})
        results["miss"][n] = per_match_us(table, {"/nowhere": None})
    return results


def format_table(results: dict[str, dict[int, float]]) -> str:
    sizes = sorted({n for by_size in results.values() for n in by_size})
    header = f"{'routes':<18}" + "".join(f"{n:>12,}" for n in sizes)
    lines = ["RoutingTable.match, µs per call (best of repeats)", header, "-" * len(header)]
    for case, by_size in results.items():
        lines.append(f"{case:<18}" + "".join(f"{by_size[n]:>12.3f}" for n in sizes))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        default=",".join(str(n) for n in DEFAULT_SIZES),
        help="comma-separated numbers of routes (default: 1,100,10000)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: expected numbers such as 1,100,10000, got {args.sizes!r}")
    if any(n < 1 or n > 99_999 for n in sizes):
        parser.error("--sizes: each size must be between 1 and 99999")
    results = measure(sizes)
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
