"""Evaluate a checkpoint, a CF artifact or the zero-shot base LLM: AUC / UAUC per split → metrics.json + report.md.

    python jobs/evaluate.py --checkpoint runs/<run>/best --data artifacts/ml-1m --out results/demo
    python jobs/evaluate.py --cf-artifact artifacts/cf/mf --data artifacts/ml-1m --out results/mf
    python jobs/evaluate.py --zero-shot --config configs/demo.yaml --out results/zero_shot --limit 400
    ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint s3://bucket/runs/<run>/best --out s3://bucket/eval

Scoring runs on Ray Data (`map_batches` over an actor pool of scorers: one actor per CPU, or per GPU with
--use-gpu; the cluster in RAY_ADDRESS or a local one). `--num-actors 0` scores in this process without Ray.
`--limit N` evaluates a seeded, stable sample of N rows per split. On any error nothing is written at --out.
Trailing KEY=VALUE arguments override the --config of --zero-shot (e.g. prompt.chat_template=true).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", metavar="URI", help="a training checkpoint (directory with manifest.json)"
    )
    src.add_argument("--cf-artifact", metavar="URI", help="a jobs/pretrain_cf.py artifact (CF-only baseline)")
    src.add_argument(
        "--zero-shot", action="store_true", help="the frozen base LLM of --config, nothing trained"
    )
    p.add_argument(
        "--config", metavar="FILE", help="experiment YAML for --zero-shot (llm and prompt sections)"
    )
    p.add_argument(
        "--data", metavar="URI", help="protocol dataset (default: the one the model was trained on)"
    )
    p.add_argument(
        "--splits", default="test,test_warm,test_cold", help="comma-separated (default: %(default)s)"
    )
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="a seeded stable sample of N rows per split"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the --limit sample (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="URI", help="output directory (local or s3://)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing evaluation at --out")
    p.add_argument(
        "--num-actors",
        type=int,
        default=None,
        metavar="N",
        help="scorer actors (default: one per CPU, or per GPU with --use-gpu; 0 = no Ray)",
    )
    p.add_argument("--use-gpu", action="store_true", help="one GPU per actor; the LLM in bf16 unless --dtype")
    p.add_argument(
        "--device", default=None, help="device inside each scorer (default: cpu, or cuda with --use-gpu)"
    )
    p.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="LLM dtype override"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="rows per forward pass (default: 16 CPU / 64 GPU)"
    )
    p.add_argument(
        "--cf-uri", default=None, metavar="URI", help="the CF artifact, if not where the checkpoint says"
    )
    p.add_argument("--name", default=None, help="the method's name in reports (e.g. CoRA-MF)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a base LLM whose config asks for trust_remote_code (runs Python code shipped with the model; "
        "refused without this flag)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of --config (zero-shot)")
    args = p.parse_args(argv)
    if args.config and not args.zero_shot:
        p.error("--config goes with --zero-shot (a checkpoint carries its own config)")
    if args.overrides and not args.zero_shot:
        p.error("KEY=VALUE overrides go with --zero-shot")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from cora_ray.config import ExperimentConfig, load_config, to_dict
    from cora_ray.errors import CoraError
    from cora_ray.eval.evaluate import evaluate, summary_table
    from cora_ray.infer.source import ScorerSource

    device = args.device or ("cuda" if args.use_gpu else "cpu")
    common = dict(
        data_uri=args.data,
        device=device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        endpoint=args.s3_endpoint,
        name=args.name,
        trust_remote_code=args.trust_remote_code,
    )
    try:
        if args.checkpoint:
            source = ScorerSource("checkpoint", uri=args.checkpoint, cf_uri=args.cf_uri, **common)
        elif args.cf_artifact:
            source = ScorerSource("cf", uri=args.cf_artifact, **common)
        else:
            cfg = load_config(ExperimentConfig, args.config, args.overrides)
            source = ScorerSource(
                "zero_shot", config=to_dict(cfg), **{**common, "name": args.name or "Zero-shot"}
            )
        doc = evaluate(
            source,
            args.out,
            splits=args.splits,
            limit=args.limit,
            seed=args.seed,
            num_actors=args.num_actors,
            use_gpu=args.use_gpu,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            name=args.name,
            endpoint=args.s3_endpoint,
        )
    except CoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_table(doc))
    print(f"results: {args.out}/metrics.json, {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
