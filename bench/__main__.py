"""`python -m bench [--quick] [--only name,…]`: run the benchmarks and write bench/results/latest.{json,md}."""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from pathlib import Path

from bench import ingest, reconcile
from bench.common import RESULTS, ROOT, Result, Sizes, log, write_results

ORDER = [
    "raw_consume",
    "raw_store_sqlite",
    "raw_store_postgres",
    "ingest_sqlite",
    "ingest_postgres",
    "ingest_naive_sqlite",
    "ingest_at_1m",
    "replay_sqlite",
    "reconcile_steps",
    "change_to_visible_p99",
    "resync_noop",
    "new_chat_200_joined",
    "worker_rss_100k",
]


GROUPS = [  # figures measured together (a figure beside its baseline)
    ["raw_consume"],
    ["raw_store_sqlite", "ingest_sqlite", "ingest_naive_sqlite", "ingest_at_1m"],
    ["raw_store_postgres", "ingest_postgres"],
    ["replay_sqlite"],
    ["reconcile_steps", "change_to_visible_p99"],
    ["resync_noop"],
    ["new_chat_200_joined"],
    ["worker_rss_100k"],
]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (development, smoke runs)")
    parser.add_argument("--only", help="comma-separated figure names (default: all)")
    parser.add_argument("--no-services", action="store_true", help="do not run scripts/services/all.sh start")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition (the test suite's run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and latest.md go")
    args = parser.parse_args()
    sizes = Sizes.smoke() if args.smoke else Sizes.quick() if args.quick else Sizes.full()
    label = "smoke" if args.smoke else "quick" if args.quick else "full"
    only = set(args.only.split(",")) if args.only else None
    if only and (unknown := only - set(ORDER)):
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    if not args.no_services:
        subprocess.run([str(ROOT / "scripts" / "services" / "all.sh"), "start"], check=True)
    started = time.monotonic()
    results: list[Result] = []
    failures: list[str] = []
    for group in GROUPS:  # one failing group (a service down) leaves the others' figures standing
        names = set(group) if only is None else only.intersection(group)
        if not names:
            continue
        module = reconcile if group[0] in reconcile.FIGURES else ingest
        try:
            results += module.run(sizes, names)
        except Exception as error:
            log(f"{', '.join(sorted(names))} failed: {type(error).__name__}: {error}")
            failures.append(f"{', '.join(sorted(names))}: {type(error).__name__}: {error}")
        results.sort(key=lambda r: ORDER.index(r.name))
        _write(results, failures, sizes, label, started, args.out)
    json_path, md_path = _write(results, failures, sizes, label, started, args.out)
    log(f"wrote {json_path} and {md_path}")
    print(md_path.read_text())
    if failures:
        raise SystemExit(1)


def _write(
    results: list[Result], failures: list[str], sizes: Sizes, label: str, started: float, directory: Path
) -> tuple:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    header = (
        f"# chatbridge bench — {label} sizes, median of {sizes.repetitions}\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit.strip() or '?'}, "
        f"{platform.python_implementation()} {platform.python_version()}, {_cores()} cores, "
        f"{(time.monotonic() - started) / 60:.1f} min. Ratios: value / baseline (latency: baseline / value)."
    )
    if failures:
        header += "\n\nFailed: " + "; ".join(failures)
    return write_results(results, header, directory)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
