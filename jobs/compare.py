"""Run (or collect) every method of docs/method.md §8 on one dataset → comparison.md + comparison.png (+ .json).

    python jobs/compare.py --config configs/compare_ml1m_cpu.yaml
    python jobs/compare.py --config configs/compare_ml1m_cpu.yaml limit=400 out=results/quick
    python jobs/compare.py --config configs/compare_ml1m_cpu.yaml --only MF,LightGCN,SASRec   # CF rows now
    python jobs/compare.py --config configs/compare_ml1m_cpu.yaml --only CoRA-SASRec@42      # one seed of a row
    python jobs/compare.py --config configs/compare_ml1m_paper.yaml --collect-only

Each method's results land in <out>/runs/<method>/ (<out>/runs/<method>/seed<N>/ for each training seed of a
method with `seeds`; metrics.json, report.md, per-row scores, protocol.json) and are reused by later runs with
the same data, splits, limit, sample seed and protocol (the entry's kind, uri and produce commands; --rerun
forces a new evaluation). Results of another protocol, or none recorded, are evaluated again when the method
runs, else collected with a label in the table. A method whose artifact does not exist is produced by its
`produce` commands (pretraining, training), else reported as "not run" (--strict: an error). Rows with seeds
show mean ± std over them; the config's `differences` get paired bootstrap intervals. Trailing KEY=VALUE
arguments override the config.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, metavar="FILE", help="a configs/compare_*.yaml")
    p.add_argument("--rerun", action="store_true", help="evaluate again even where results exist")
    p.add_argument(
        "--collect-only", action="store_true", help="never evaluate or produce; tabulate what exists"
    )
    p.add_argument("--strict", action="store_true", help="a method that cannot be run is an error")
    p.add_argument(
        "--only",
        default=None,
        metavar="NAMES",
        help="comma-separated methods to run now (e.g. MF,LightGCN,SASRec; NAME@SEED: one training seed of a "
        "method with seeds); the others are only collected, and reported as not run where they have no results",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow base LLMs whose config asks for trust_remote_code (refused without this flag)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the config")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    from cora_ray.errors import CoraError
    from cora_ray.eval.compare import load_compare_config, run_compare

    try:
        cfg = load_compare_config(args.config, args.overrides)
        summary = run_compare(
            cfg,
            rerun=args.rerun,
            collect_only=args.collect_only,
            strict=args.strict,
            progress=not args.no_progress,
            only=[name.strip() for name in args.only.split(",") if name.strip()] if args.only else None,
            trust_remote_code=args.trust_remote_code,
        )
    except CoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary["markdown"])
    print(f"written: {cfg.out}/comparison.md, {cfg.out}/comparison.png, {cfg.out}/comparison.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
