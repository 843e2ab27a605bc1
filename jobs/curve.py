"""A learning curve: train (or continue) one run, score its checkpoints at chosen steps on test, plot the curve.

    python jobs/curve.py --config configs/curve_ml1m_cpu.yaml                 # train what is missing, score, plot
    python jobs/curve.py --config configs/curve_ml1m_cpu.yaml --no-train      # score the steps the run has
    python jobs/curve.py --config configs/curve_ml1m_cpu.yaml --collect-only  # tabulate what exists

A run longer than one sitting: run the same command again; the run directory is continued in place
(`jobs/train.py --resume <run>`) from its latest checkpoint. Each scored step lands in <out>/runs/step<N>/ and is
reused while its checkpoint is unchanged. Writes <out>/curve.md, curve.json, curve.png (cora_ray/eval/curve.py).
Trailing KEY=VALUE arguments override the config.
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
    p.add_argument("--config", required=True, metavar="FILE", help="a configs/curve_*.yaml")
    p.add_argument("--no-train", action="store_true", help="do not train; score the checkpoints the run has")
    p.add_argument(
        "--collect-only", action="store_true", help="neither train nor score; tabulate what exists"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the config")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    from cora_ray.errors import CoraError
    from cora_ray.eval.curve import curve_markdown, load_curve_config, run_curve

    try:
        cfg = load_curve_config(args.config, args.overrides)
        summary = run_curve(
            cfg,
            do_train=not (args.no_train or args.collect_only),
            do_score=not args.collect_only,
            progress=not args.no_progress,
        )
    except CoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(curve_markdown(summary))
    print(f"written: {cfg.out}/curve.md, {cfg.out}/curve.json, {cfg.out}/curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
