"""Run every benchmark, print one table, write every figure to a JSON file.

    python -m bench            # full run
    python -m bench --quick    # shorter rounds, fewer repetitions (about a minute)
    python -m bench --only fleet   # the benchmarks of one module (figures merged into the file)

A benchmark is a callable taking `quick` and returning {figure name: figure}, where a figure
has at least "ensign" and "baseline" (each with "median", "min", "max"), "unit", "ratio",
"target" and "met", and may have a one-line "note". Add new ones to BENCHMARKS. Missing a
target is a finding, not a failure: the exit code is non-zero only when a benchmark could
not run.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    actions_middleware,
    anomaly_overhead,
    audit_append,
    cli_start,
    first_secret,
    first_svid,
    fleet,
    https_exchange,
    jwt_fetch,
    registry_match,
    restart,
    sigstore_attest,
    streams,
    svid_mint,
    tpm_quotes,
)

Figure = dict[str, Any]
Benchmark = Callable[[bool], dict[str, Figure]]

BENCHMARKS: list[Benchmark] = [
    jwt_fetch.run, audit_append.run, registry_match.run, sigstore_attest.run, tpm_quotes.run,
    svid_mint.run, first_svid.run, first_secret.run, streams.run, anomaly_overhead.run,
    https_exchange.run, actions_middleware.run, fleet.run, restart.run, cli_start.run,
]


def _side(f: Figure, side: str) -> str:
    s = f[side]
    return f"{s['median']:.1f} {f['unit']} [{s['min']:.1f}-{s['max']:.1f}]"


def table(figures: dict[str, Figure]) -> str:
    head = ("figure", "ensign (median [min-max])", "baseline (median [min-max])", "ratio",
            "target")
    rows = [head]
    for name, f in figures.items():
        target = f["target"] + ("" if f["met"] else "  MISSED")
        rows.append((name, _side(f, "ensign"), _side(f, "baseline"), f"{f['ratio']:.3f}",
                     target))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for name, f in figures.items():
        if f.get("note"):
            lines.append(f"{name}: {f['note']}")
        if f.get("errors"):
            lines.append(f"{name}: {f['errors']} errors, e.g. {f.get('error_samples', [])[:3]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about a minute)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.json",
                        help="where to write the figures (default bench/results.json)")
    parser.add_argument("--only", metavar="MODULE", action="append",
                        help="run only this benchmark module (e.g. fleet); repeatable")
    args = parser.parse_args(argv)
    figures: dict[str, Figure] = {}
    failed = False
    chosen = [b for b in BENCHMARKS
              if not args.only or b.__module__.rsplit(".", 1)[-1] in args.only]
    kept: dict[str, Figure] = {}
    if args.only and args.out.exists():  # keep the other modules' last figures in the file
        kept = json.loads(args.out.read_text())
    for bench in chosen:
        try:
            figures.update(bench(args.quick))
        except Exception:
            failed = True
            print(f"benchmark {bench.__module__} failed:", file=sys.stderr)
            traceback.print_exc()
    if figures:  # a run where nothing could be measured keeps the last results
        args.out.write_text(json.dumps({**kept, **figures}, indent=2) + "\n")
        print(table(figures))
        print(f"(figures written to {args.out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
