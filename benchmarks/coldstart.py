"""Cold-start benchmark on every example app: all layers, tables, targets, JSON.

    python benchmarks/coldstart.py [--trials 300] [--process-trials 20] [--json FILE]

For each app under examples/ this runs the same measurement as
``thaw bench coldstart`` (see adapters/cli/coldstart.py for the layers) and then
checks the issue's targets, printing where they are met and where not.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, write_json  # noqa: E402
from thaw.adapters.cli.coldstart import format_report, run_coldstart  # noqa: E402

EXAMPLES = ["hello", "payment_webhook"]


def check_targets(report: dict[str, Any]) -> list[str]:
    layers = report["layers"]
    lines = []
    for capability in report["capabilities"]:
        a = layers[f"a_shared:{capability}"]
        c = layers["c_nocache"]
        d = layers[f"d_source:{capability}"]
        lines.append(
            f"{report['app']}.{capability}: (a) p50 {a['p50'] * 1e3:.3f} ms "
            f"[target < 0.2: {'met' if a['p50'] < 0.0002 else 'MISSED'}], "
            f"p99 {a['p99'] * 1e3:.3f} ms [target < 1: {'met' if a['p99'] < 0.001 else 'MISSED'}], "
            f"(c)/(a) {c[f'x_a:{capability}']:.0f}x [>= 100: "
            f"{'met' if c[f'x_a:{capability}'] >= 100 else 'MISSED'}], "
            f"(d)/(a) {d[f'x_a:{capability}']:.0f}x [>= 1000: "
            f"{'met' if d[f'x_a:{capability}'] >= 1000 else 'MISSED'}]"
        )
    b, c0, c1 = layers["b"]["p50"], layers["c_nocache"]["p50"], layers["c_cache"]["p50"]
    lines.append(
        f"{report['app']}: (b) {b * 1e3:.3f} ms vs (c) no cache {c0 * 1e3:.3f} ms "
        f"({c0 / b:.1f}x) and (c) with cache {c1 * 1e3:.3f} ms ({c1 / b:.1f}x) "
        f"[b faster than c-nocache: {'met' if b < c0 else 'MISSED'}; "
        f"b not slower than c-cache: {'met' if b <= c1 else 'MISSED'}]"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--process-trials", type=int, default=20)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--only", choices=EXAMPLES, action="append")
    args = parser.parse_args(argv)
    # payment_webhook warns on every start without a secret; the benchmark signs nothing.
    os.environ.setdefault("PAYMENT_WEBHOOK_SECRET", "whsec_benchmark_only")
    reports = []
    for name in args.only or EXAMPLES:
        print(f"== {name}", flush=True)
        report = run_coldstart(
            str(ROOT / "examples" / name),
            trials=args.trials,
            process_trials=args.process_trials,
            progress=lambda text: print(f"   ... {text}", file=sys.stderr, flush=True),
        )
        print(format_report(report))
        print()
        reports.append(report)
    print("targets:")
    for report in reports:
        for line in check_targets(report):
            print(f"  {line}")
    write_json(args.json, {"benchmark": "coldstart", "machine": machine(), "apps": reports})
    return 0


if __name__ == "__main__":
    sys.exit(main())
