"""`make demo`: prepare real ML-1M, pretrain MF, train CoRA-MF, evaluate MF / zero-shot / CoRA-MF, print a table.

    python jobs/demo.py                       # what `make demo` runs
    python jobs/demo.py --limit 1000          # evaluate on more seeded test rows
    python jobs/demo.py train.max_steps=128   # train again with overrides of configs/demo.yaml

Each step is the job a user would type (printed before it runs); finished outputs are reused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=300, help="seeded test rows to evaluate (default 300)")
    p.add_argument("--seed", type=int, default=42, help="seed of the test sample (default 42)")
    p.add_argument(
        "--config", default="configs/demo.yaml", help="training config (default configs/demo.yaml)"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training overrides (forces a new run)")
    args = p.parse_args(argv)

    from cora_ray.demo import DemoPlan, run_demo

    run_demo(
        DemoPlan(
            root=REPO, config=args.config, limit=args.limit, seed=args.seed, train_overrides=args.overrides
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
