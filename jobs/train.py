"""Train CoRA (or a baseline) with Ray Data + Ray Train + DeepSpeed; print the best checkpoint's URI.

    python jobs/train.py                                         # configs/demo.yaml (CPU, real ML-1M)
    python jobs/train.py --config configs/ml1m_cora_mf.yaml train.lr=5e-4 train.num_workers=8
    python jobs/train.py --config configs/demo.yaml --resume runs/demo-20250101-120000          # continue a run
    python jobs/train.py --config configs/demo.yaml --resume runs/demo-.../checkpoint_2025-...  # from a checkpoint
    python jobs/train.py --config configs/ml1m_cora_mf.yaml train.num_workers=1 --plan [--json]  # what it will do

    ray start --head
    ray job submit --runtime-env runtime_env.yaml --working-dir . -- \\
        python jobs/train.py --config configs/demo.yaml --base-dir "$PWD"

Trailing KEY=VALUE arguments override the config (dotted keys, YAML values). With RAY_ADDRESS set (as under
`ray job submit`) the run joins that cluster; otherwise a local Ray is started and shut down at the end.
Relative local paths in the config are resolved against --base-dir (default: the current directory): a
submitted job runs in an uploaded copy of the repository that has no artifacts/ and runs/.
Everything is checked before Ray starts (dataset and CF manifests, tokenizer and answer token, values in
range, workers vs CPUs); a problem is one line on stderr and exit code 2; a missing dataset or CF artifact
is named with the command that makes it. The demo config (no --config) builds its own missing inputs first:
real ML-1M and an MF artifact (1-3 min on 2 cores, cora_ray/bootstrap.py).

--plan prints the resolved run and starts nothing (no Ray, no model, nothing downloaded): global batch =
micro-batch x workers x accumulation, steps, epochs, validation rows and their share of compute, FLOP and
GPU-hours at a stated MFU (cora_ray/train/plan.py); --json prints it as one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "demo.yaml"

for _k, _v in {
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}.items():
    os.environ.setdefault(_k, _v)
if str(REPO) not in sys.path:  # `python jobs/train.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"experiment YAML (default: {DEFAULT_CONFIG.relative_to(REPO)})",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="URI",
        help="a run directory to continue, or a checkpoint to start from",
    )
    p.add_argument(
        "--base-dir",
        default=None,
        metavar="DIR",
        help="resolve relative local paths against DIR (default: cwd)",
    )
    p.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="logical CPUs of a local Ray (default: max(4, 2 x workers))",
    )
    p.add_argument("--check", action="store_true", help="run the checks only, then exit (nothing starts)")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the resolved run (batch, steps, validation share, FLOP) and exit",
    )
    p.add_argument("--json", action="store_true", help="with --plan: one JSON object on stdout")
    p.add_argument(
        "--mfu", type=float, default=None, help="with --plan: assumed model FLOP utilisation (0-1)"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-4")
    return p.parse_args(argv)


def _is_demo_config(config: str) -> bool:
    return Path(config).resolve() == DEFAULT_CONFIG


def build_demo_inputs(cfg) -> None:
    """The demo config's dataset and MF artifact, made where missing (cora_ray/bootstrap.py)."""
    from cora_ray.bootstrap import build_missing_demo_inputs, has_manifest
    from cora_ray.capabilities import capabilities

    # a method without CF vectors (model.cf_artifact=null, e.g. TALLRec on the demo config) needs no artifact
    cf = cfg.model.cf_artifact if capabilities(cfg.model.method).needs_cf else None
    if has_manifest(cfg.data.uri) and (cf is None or has_manifest(cf)):
        return
    print(
        "[train] the demo needs the ML-1M dataset and an MF artifact: building what is missing (1-3 min on 2 cores)",
        flush=True,
    )
    build_missing_demo_inputs(REPO, cfg.data.uri, cf, prefix="[train]")


def print_plan(config: str, args: argparse.Namespace) -> int:
    """--plan: the resolved run on stdout (text or one JSON object); nothing starts."""
    import json

    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.errors import CoraError
    from cora_ray.train.plan import build_plan, format_plan

    try:
        cfg = load_config(ExperimentConfig, config, args.overrides)
        shown = args.config or str(DEFAULT_CONFIG.relative_to(REPO))
        plan = build_plan(cfg, config_path=shown, base_dir=args.base_dir or os.getcwd(), mfu=args.mfu)
    except CoraError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.errors import CoraError

    config = args.config or str(DEFAULT_CONFIG)
    if args.json and not args.plan:
        print("train: --json goes with --plan", file=sys.stderr)
        return 2
    if args.plan:
        return print_plan(config, args)
    try:
        from cora_ray.train.trainer import prepare_run, resolve_local_paths, run_training

        cfg = load_config(ExperimentConfig, config, args.overrides)
        cfg = resolve_local_paths(cfg, args.base_dir or os.getcwd())
        if _is_demo_config(config) and not args.check:
            build_demo_inputs(cfg)
        plan = prepare_run(cfg, resume=args.resume)
    except CoraError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    print(
        f"[train] {config}: {cfg.model.method}, data {cfg.data.uri} ({plan.dataset_manifest['counts']['train']:,} train rows, "
        f"{len(plan.valid_keys):,} validation rows), base LLM {cfg.llm.name_or_path}",
        flush=True,
    )
    if args.check:
        print("[train] checks passed; --check given, nothing started")
        return 0
    import ray.train

    try:
        summary = run_training(plan, num_cpus=args.num_cpus)
    except (CoraError, ray.train.TrainingFailedError) as exc:
        print(f"train: training failed: {exc}", file=sys.stderr)
        return 1
    return 0 if summary.best_checkpoint else 1


if __name__ == "__main__":
    sys.exit(main())
