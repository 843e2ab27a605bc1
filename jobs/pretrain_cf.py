"""Pretrain a CF backbone (MF, LightGCN, SASRec) on a protocol dataset, on Ray, and publish its artifact.

    python jobs/pretrain_cf.py --data artifacts/ml-1m --backbone mf --out artifacts/cf/mf
    python jobs/pretrain_cf.py --data s3://bucket/ml-1m --backbone sasrec --out s3://bucket/cf/sasrec --grid
    python jobs/pretrain_cf.py --data artifacts/ml-1m --backbone mf --out /tmp/mf train.lr=1e-2 model.dim=64

Runs on the Ray cluster named by RAY_ADDRESS (e.g. under `ray job submit`), else on a local one.
`--grid` runs the paper's grid (grid.lrs x grid.weight_decays: {1e-1,1e-2,1e-3} x {1e-2,1e-4,1e-6}) as
Ray Tune trials and keeps the best by validation AUC. Without --config, configs/cf/<backbone>.yaml (the
tuned defaults) is used when it exists. Exit status: 0 ok, 2 bad input (config, data, output), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cora_ray.cf.config import BACKBONES, load_cf_config  # noqa: E402
from cora_ray.errors import ConfigError, CoraError, DataError, StorageError  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="protocol dataset URI (jobs/prepare_data.py output)")
    p.add_argument(
        "--backbone", choices=BACKBONES, help="which CF model (default: the config's model.backbone)"
    )
    p.add_argument("--out", required=True, help="artifact URI to write (local path or s3://)")
    p.add_argument("--config", help="YAML config (default: configs/cf/<backbone>.yaml when present)")
    p.add_argument("--grid", action="store_true", help="run the lr x weight-decay grid as Ray Tune trials")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --out")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (ignored with RAY_ADDRESS)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.lr=1e-2 model.dim=64")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    try:
        config = args.config
        if config is None:
            if args.backbone is None:
                raise ConfigError(
                    "give --backbone (mf, lightgcn, sasrec) or a --config that sets model.backbone"
                )
            default = REPO / "configs" / "cf" / f"{args.backbone}.yaml"
            config = str(default) if default.is_file() else None
        overrides = list(args.overrides) + ([f"model.backbone={args.backbone}"] if args.backbone else [])
        cfg = load_cf_config(config, overrides)
        print(f"config: {config or '<defaults>'} {' '.join(overrides)}", flush=True)

        from cora_ray.cf.checks import check_inputs, check_out

        check_inputs(args.data, cfg, args.s3_endpoint)  # before starting Ray: bad input fails in a second
        check_out(args.out, args.overwrite, args.s3_endpoint)

        from cora_ray.cf.runner import init_ray, run_pretrain

        started = init_ray(args.num_cpus)
        try:
            run_pretrain(
                cfg, args.data, args.out, grid=args.grid, overwrite=args.overwrite, endpoint=args.s3_endpoint
            )
        finally:
            if started:
                from cora_ray.ray_local import shutdown_local_cluster

                shutdown_local_cluster()
    except (ConfigError, DataError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
