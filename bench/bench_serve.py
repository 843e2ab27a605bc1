"""Serving benchmarks (issue 7): throughput and latency vs concurrency, dynamic batching on vs off, the G
cache on vs off under a repeat pattern, and what the cache can save at a realistic model size.

    python bench/bench_serve.py                  # ~6 minutes on a 2-core CPU; results in bench/results/
    python bench/bench_serve.py --seconds 5      # shorter measurement windows

Everything runs on this machine: a local Ray cluster, the Serve application deployed from a config
(like `serve run serve.local.config`) on 127.0.0.1, and closed-loop HTTP clients (aiohttp, in this
process) that send the next request as soon as the previous answer arrives. The model is the tiny test
setup (tests/serve/artifacts.py: synthetic dataset, MF, a random 2-layer LLaMA, random CoRA weights), so
these numbers measure the serving stack — HTTP, validation, routing, batching, the cache — more than the
LLM. The cache's payoff depends on the ratio of generator cost to LLM cost, so it is also measured
in-process on a model with SmolLM2-135M's shape (30 layers, d_model 576) and the paper's generator.

Results (bench/common.py format): serve_throughput_c{1,8,32}, serve_batching, serve_cache,
serve_cache_components (+ .md each) and serve.md (overview).

    python bench/bench_serve.py --admission --checkpoint <a SmolLM2 checkpoint of jobs/train.py>

measures admission in rows (docs/deploy.md §6) instead: serve.local.config as shipped (its limits,
batching, rows per forward; only the checkpoint, the dataset and the port are filled in), 16 and then 32
closed-loop clients sending 5-item /v1/score requests (clients wait `Retry-After` after a 503). Per run:
timeouts (HTTP 408/504 or the client's own timeout), every 200's latency against request_timeout_s, every
503/429's latency against 1 s, and accepted rows/s per scorer CPU against the offline Scorer's rows/s on one
CPU (a Ray task with the replica's CPU and thread count, same kind of rows, measured before and after the
load). Results: serve_admission.json + .md, with the machine's load average.

    python bench/bench_serve.py --bucket-scope --checkpoint <the same checkpoint>

how much of that comparison is length bucketing: the offline reference's rows scored in one call (sorted by
length across all of them, then chunks of max_rows_per_forward), in 20-row groups (a replica's batch), and
through the replica's own ScoringEngine per batch, one thread, rounds round-robin (bench/common.py) → serve_bucket_scope.

    python bench/bench_serve.py --scoring-thread --checkpoint <the same checkpoint> --rounds 3

a replica's batches on the main thread against `asyncio.to_thread` (where a replica runs them), each
MALLOC_ARENA_MAX setting in a fresh process → serve_scoring_thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import (  # noqa: E402
    RESULTS,
    interleaved_times,
    median,
    portable,
    summary_table,
    write_result,
)
from tests.serve import harness  # noqa: E402
from tests.serve.artifacts import build_tiny_setup  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# load generation
# ---------------------------------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


async def _load(base: str, clients: int, seconds: float, warmup: float, make_request) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    rows = 0
    errors: dict[int, int] = {}
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal rows
        rng = random.Random(1000 + k)
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            path, body, n_rows = make_request(rng)
            async with session.post(base + path, json=body) as resp:
                await resp.read()
                status = resp.status
            t1 = time.perf_counter()
            if t0 >= t_start:
                if status == 200:
                    latencies.append(t1 - t0)
                    rows += n_rows
                else:
                    errors[status] = errors.get(status, 0) + 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients), timeout=timeout
    ) as session:
        await asyncio.gather(*(client(k, session) for k in range(clients)))
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(latencies),
        "throughput_rps": len(latencies) / seconds,
        "rows_per_s": rows / seconds,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "errors": errors,
    }


def run_load(base: str, clients: int, seconds: float, make_request, warmup: float = 2.0) -> dict[str, Any]:
    stats = asyncio.run(_load(base, clients, seconds, warmup, make_request))
    stats["load_average_1m"] = os.getloadavg()[0]
    return stats


async def _handle_load(jobs: list[Any], clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    """Closed-loop calls straight to the scorer deployment (no HTTP, no ingress): what dynamic batching changes."""
    from ray import serve

    handle = serve.get_deployment_handle("CoRAScorer", app_name=harness.APP)
    latencies: list[float] = []
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds

    async def client(k: int) -> None:
        rng = random.Random(2000 + k)
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            await handle.score.remote(rng.choice(jobs))
            if t0 >= t_start:
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(k) for k in range(clients)))
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(latencies),
        "throughput_rps": len(latencies) / seconds,
        "rows_per_s": len(latencies) / seconds,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "errors": {},
        "load_average_1m": os.getloadavg()[0],
    }


def run_handle_load(jobs: list[Any], clients: int, seconds: float, warmup: float = 2.0) -> dict[str, Any]:
    return asyncio.run(_handle_load(jobs, clients, seconds, warmup))


def score_one(users: list[str], items: list[str]):
    """One (user, item) row per request: the case dynamic batching is for."""

    def make(rng: random.Random):
        return "/v1/score", {"user_id": rng.choice(users), "item_ids": [rng.choice(items)]}, 1

    return make


def repeat_pattern(users: list[str], items: list[str], pool: int = 8, per_user: int = 12, ask: int = 8):
    """Users come back for overlapping candidates: each of `pool` users has a fixed set of `per_user`
    candidates and asks for a random `ask` of them, with the stored history (so the prompt repeats too)."""
    rng0 = random.Random(7)
    chosen = rng0.sample(users, pool)
    sets = {u: rng0.sample(items, per_user) for u in chosen}

    def make(rng: random.Random):
        u = rng.choice(chosen)
        return "/v1/score", {"user_id": u, "item_ids": rng.sample(sets[u], ask)}, ask

    return make


def alternate(fns: dict[str, Any], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Run each configuration `rounds` times, round-robin (A B A B), so drift hits all alike."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "throughput_rps": sum(r["throughput_rps"] for r in runs) / len(runs),
        "rows_per_s": sum(r["rows_per_s"] for r in runs) / len(runs),
        "p50_ms": median([r["p50_ms"] for r in runs]),
        "p99_ms": median([r["p99_ms"] for r in runs]),
        "errors": sum(sum(r["errors"].values()) for r in runs),
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------------------
# component timing: what the cache can save at a realistic size
# ---------------------------------------------------------------------------------------------------------

PAPER_GENERATOR = {"num_queries": 4, "num_layers": 8, "hidden_size": 512, "num_heads": 8, "ffn_size": 3072}
SMOLLM2_SHAPE = {
    "hidden_size": 576,
    "num_layers": 30,
    "num_heads": 9,
    "num_kv_heads": 3,
    "intermediate_size": 1536,
}


def cache_components(setup_root: Path, rows: int, reps: int) -> dict[str, Any]:
    """In-process: seconds per row for generating G, and for the forward pass with G supplied."""
    import numpy as np
    import torch

    from cora_ray.infer.scorer import Scorer
    from cora_ray.infer.service import Catalog

    setup = build_tiny_setup(setup_root, llm=SMOLLM2_SHAPE, generator=PAPER_GENERATOR, cf_dim=256, rank=16)
    scorer = Scorer.from_checkpoint(setup.checkpoint_uri, setup.data_uri)
    catalog = Catalog.from_dataset(setup.data_uri)
    users = sorted(catalog.histories)[:rows]
    users = (users * rows)[:rows]
    items = [1 + (k % 50) for k in range(rows)]
    hists = [catalog.histories[u][-10:] for u in users]
    G = scorer.compute_G(users, items, hists)
    times = interleaved_times(
        {
            "generate_G": lambda: scorer.compute_G(users, items, hists),
            "forward_with_G": lambda: scorer.score(users, items, hists, G=G, batch_size=rows),
        },
        reps=reps,
    )
    t_g, t_f = median(times["generate_G"]), median(times["forward_with_G"])
    return {
        "rows": rows,
        "g_shape": list(G.shape[1:]),
        "g_bytes_per_row": int(G[0].numel() * G[0].element_size()),
        "generate_G_s_per_row": t_g / rows,
        "forward_with_G_s_per_row": t_f / rows,
        "max_saving_fraction": t_g / (t_g + t_f),
        "threads": torch.get_num_threads(),
        "samples": {k: [float(x) for x in v] for k, v in times.items()},
        "prompt_tokens_mean": float(
            np.mean([len(x) for x in scorer.encode(users, items, hists)["input_ids"].tolist()])
        ),
    }


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# --admission: admission in rows under overload, against the offline scorer's rate
# ---------------------------------------------------------------------------------------------------------

ADMISSION_CLIENTS = (16, 32)
ITEMS_PER_REQUEST = 5
SCORER_THREADS = 1  # serve.local.config's CoRAScorer num_cpus (checked below); OMP threads alike
# The load generator's niceness: Ray starts its worker processes — Serve's proxy, ingress and scorer replicas
# among them — at niceness 15, so clients left at 0 in this process would take the CPU from the scorer first
# whenever they run, on this 2-core machine. On a cluster the clients are not on the replica's node at all;
# here they get the serving processes' priority, no more.
CLIENT_NICENESS = 15


def _job_rows(jobs: list[Any]) -> tuple[list[int], list[int], list[list[int]]]:
    """Resolved requests as (user, item, history) rows, one per item, in request order (as a replica scores)."""
    users = [j.user_id or 0 for j in jobs for _ in j.item_ids]
    items = [i for j in jobs for i in j.item_ids]
    hists = [j.history for j in jobs for _ in j.item_ids]
    return users, items, hists


def _offline_rows_per_s(checkpoint: str, data_uri: str, jobs: list[Any], rows: int, chunk: int) -> dict:
    """The offline Scorer on one CPU (a Ray task like an evaluation actor): rows/s over `rows` rows."""
    import ray

    @ray.remote(num_cpus=SCORER_THREADS)
    def measure() -> dict:
        import torch

        from cora_ray.infer.scorer import Scorer

        torch.set_num_threads(SCORER_THREADS)
        scorer = Scorer.from_checkpoint(checkpoint, data_uri=data_uri, device="cpu")
        users, items, hists = _job_rows(jobs)
        scorer.score(users[:chunk], items[:chunk], hists[:chunk], batch_size=chunk)  # warm up
        t0 = time.perf_counter()
        scorer.score(users[:rows], items[:rows], hists[:rows], batch_size=chunk)
        seconds = time.perf_counter() - t0
        return {
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "threads": torch.get_num_threads(),
        }

    return ray.get(measure.remote())


async def _admission_load(
    base: str, clients: int, seconds: float, warmup: float, make_request, client_timeout: float
) -> list[dict[str, Any]]:
    """Closed loop; a 503/429 makes the client wait Retry-After (at most 30 s) before its next request.
    Every request is recorded (times relative to the window's start, `warmup` s after the load starts);
    none starts after the window, and all are awaited to their end."""
    import aiohttp

    records: list[dict[str, Any]] = []
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(5000 + k)
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            path, body, n_rows = make_request(rng)
            status, retry = None, None
            try:
                async with session.post(base + path, json=body) as resp:
                    await resp.read()
                    status = resp.status
                    retry = resp.headers.get("Retry-After")
            except TimeoutError:
                status = "client_timeout"
            t1 = time.perf_counter()
            records.append(  # all requests: the rate counts answers in the window whenever they started
                {
                    "start": t0 - t_start,
                    "end": t1 - t_start,
                    "latency_s": t1 - t0,
                    "status": status,
                    "rows": n_rows,
                    "retry_after": retry,
                }
            )
            if status in (503, 429):
                await asyncio.sleep(min(30.0, float(retry or 1)))

    timeout = aiohttp.ClientTimeout(total=client_timeout)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients), timeout=timeout
    ) as session:
        await asyncio.gather(*(client(k, session) for k in range(clients)))
    return records


def summarize_admission(all_records: list[dict[str, Any]], seconds: float, request_timeout_s: float) -> dict:
    """Counts and the checks of docs/deploy.md §6 for one load run: every request that started in the window
    is checked; the client-side rate is the rows of 200 answers that ended in the window (whenever sent)."""
    answered = [r for r in all_records if r["status"] == 200 and 0 <= r["end"] <= seconds]
    records = [r for r in all_records if r["start"] >= 0]
    ok = [r for r in records if r["status"] == 200]
    refused = [r for r in records if r["status"] in (503, 429)]
    timeouts = [r for r in records if r["status"] in (408, 504, "client_timeout")]
    other = [r for r in records if r not in ok and r not in refused and r not in timeouts]
    ok_lat = [r["latency_s"] for r in ok]
    ref_lat = [r["latency_s"] for r in refused]
    return {
        "requests": len(records),
        "succeeded": len(ok),
        "refused_503_429": len(refused),
        "timeouts": len(timeouts),
        "other_errors": {
            str(s): sum(1 for r in other if r["status"] == s) for s in {r["status"] for r in other}
        },
        "accepted_rows_window": sum(r["rows"] for r in answered),
        "accepted_rows_per_s_window": sum(r["rows"] for r in answered) / seconds,
        "success_latency_s": {
            "p50": percentile(ok_lat, 0.5),
            "p99": percentile(ok_lat, 0.99),
            "max": max(ok_lat, default=0.0),
        },
        "refusal_latency_s": {"p50": percentile(ref_lat, 0.5), "max": max(ref_lat, default=0.0)},
        "every_success_within_request_timeout": all(x <= request_timeout_s for x in ok_lat),
        "every_refusal_within_1s": all(x <= 1.0 for x in ref_lat),
    }


def _local_scorer_config(checkpoint: str) -> tuple[str, str, dict, dict, dict]:
    """(absolute checkpoint, its dataset, serve.local.config, its application, its CoRAScorer deployment)."""
    import yaml

    from serve.app import resolve_data_uri

    checkpoint = str(Path(checkpoint).absolute())
    data_uri = str(Path(resolve_data_uri(checkpoint, None)).absolute())
    config = yaml.safe_load((REPO / "serve.local.config").read_text())
    app = config["applications"][0]
    scorer_d = {d["name"]: d for d in app["deployments"]}["CoRAScorer"]
    return checkpoint, data_uri, config, app, scorer_d


@dataclass
class _ReplicaPath:
    """A replica's scoring path without Serve (one torch thread): serve.local.config's scorer user_config, the
    checkpoint's Scorer and --admission's first requests, three batches of `per_batch` requests."""

    checkpoint: str  # absolute
    user_config: dict
    per_batch: int  # requests per replica batch: max_batch_rows // ITEMS_PER_REQUEST
    jobs: list[Any]
    scorer: Any

    def engine(self, **options: Any) -> Any:
        """A ScoringEngine over `scorer` with the user_config, `options` replacing some of it."""
        from cora_ray.infer.service import ScorerOptions, ScoringEngine

        user_config = {**self.user_config, "checkpoint_uri": self.checkpoint, **options}
        return ScoringEngine(self.scorer, ScorerOptions.from_user_config(user_config))


def _replica_path(checkpoint: str) -> _ReplicaPath:
    import torch

    from cora_ray.infer.scorer import Scorer
    from cora_ray.infer.service import Catalog

    torch.set_num_threads(SCORER_THREADS)
    checkpoint, data_uri, _, _, scorer_d = _local_scorer_config(checkpoint)
    user_config = scorer_d["user_config"]
    per_batch = int(user_config["max_batch_rows"]) // ITEMS_PER_REQUEST
    catalog = Catalog.from_dataset(data_uri)
    jobs = _seeded_jobs(catalog, *_request_pool(catalog), 3 * per_batch)  # --admission's first requests
    scorer = Scorer.from_checkpoint(checkpoint, data_uri=data_uri, device="cpu")
    return _ReplicaPath(checkpoint, user_config, per_batch, jobs, scorer)


def _request_pool(catalog: Any) -> tuple[list[str], list[str]]:
    """Who and what the benchmark's requests ask for: known users with a stored history, items with a title."""
    known = sorted(u for u in catalog.user_ids if catalog.histories.get(catalog.user_ids[u]))
    items = [r for r, i in catalog.item_ids.items() if catalog.title(i)]
    return known, items


def _seeded_jobs(catalog: Any, known: list[str], items: list[str], n: int) -> list[Any]:
    """`n` resolved requests of ITEMS_PER_REQUEST items, seeded: --admission's offline timing and --chunking
    score the same first requests."""
    from cora_ray.infer.service import RequestLimits

    rng = random.Random(7)
    return [
        catalog.resolve(rng.choice(known), rng.sample(items, ITEMS_PER_REQUEST), None, RequestLimits())
        for _ in range(n)
    ]


def _checkpoint_identity(checkpoint: str) -> dict[str, Any]:
    """The base LLM and step of a checkpoint, from its manifest (what a result records of it)."""
    from cora_ray import storage

    manifest = storage.read_json(storage.join(checkpoint, storage.MANIFEST))
    return {"base_llm": manifest["base_llm"]["identity"], "step": manifest.get("step")}


def run_admission(checkpoint: str, seconds: float, offline_rows: int) -> int:
    """The --admission measurement (module docstring); writes bench/results/serve_admission.{json,md}."""
    from bench.common import machine
    from cora_ray.infer.service import Catalog
    from cora_ray.ray_local import init_local_cluster, shutdown_local_cluster

    checkpoint, data_uri, config, app, scorer_d = _local_scorer_config(checkpoint)
    assert scorer_d["ray_actor_options"]["num_cpus"] == SCORER_THREADS, "serve.local.config changed: update"
    port = harness.free_port()
    base = f"http://127.0.0.1:{port}"
    config["http_options"]["port"] = port
    app["args"]["data_uri"] = data_uri
    scorer_d["user_config"]["checkpoint_uri"] = checkpoint
    uc = scorer_d["user_config"]
    request_timeout_s = float(config["http_options"]["request_timeout_s"])
    limits = app["args"]["limits"]

    catalog = Catalog.from_dataset(data_uri)
    known, items = _request_pool(catalog)
    offline_jobs = _seeded_jobs(catalog, known, items, offline_rows // ITEMS_PER_REQUEST + 2)

    def make_request(r: random.Random):
        return "/v1/score", {"user_id": r.choice(known), "item_ids": r.sample(items, ITEMS_PER_REQUEST)}, 5

    load_before = os.getloadavg()
    init_local_cluster(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "PYTHONPATH": str(REPO),
                "OMP_NUM_THREADS": str(SCORER_THREADS),
                "RAY_AUTH_MODE": "disabled",
                "TOKENIZERS_PARALLELISM": "false",
            }
        },
    )
    from ray import serve

    runs: dict[str, Any] = {}
    offline: list[dict] = []
    try:
        chunk = int(uc["max_rows_per_forward"])
        offline.append(_offline_rows_per_s(checkpoint, data_uri, offline_jobs, offline_rows, chunk))
        print(f"offline before: {offline[-1]}", flush=True)
        serve.start(
            http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": request_timeout_s},
            proxy_location="HeadOnly",
        )
        harness.deploy(config, timeout_s=600)
        harness.wait_http(base)
        run_load(base, 2, 20, make_request, warmup=1)  # warm every process (and the replica's rate)
        client_niceness = os.nice(max(0, CLIENT_NICENESS - os.nice(0)))  # this (client) thread from here on
        for clients in ADMISSION_CLIENTS:
            la = os.getloadavg()
            info_before = harness.request(base, "GET", "/v1/model")[1]
            before = info_before["serving"]
            recs = asyncio.run(
                _admission_load(base, clients, seconds, 5.0, make_request, request_timeout_s + 30)
            )
            summary = summarize_admission(recs, seconds, request_timeout_s)
            summary["load_average_during"] = [la, os.getloadavg()]
            info_after = harness.request(base, "GET", "/v1/model")[1]
            after = info_after["serving"]
            summary["replica"] = after
            busy = after["batch_busy_s"] - before["batch_busy_s"]
            # load start to the end of the last batch: after the window, clients refused with a Retry-After
            # sleep it out before they stop, and the drained replica's wait for them is not serving time
            wall = after["last_batch_end_s"] - before["uptime_s"]
            summary["wall_to_snapshot_s"] = after["uptime_s"] - before["uptime_s"]
            rows_done = after["admitted_rows"] - before["admitted_rows"] - after["queued_rows"]
            summary["replica_busy_fraction"] = busy / wall  # time in batches / time, load start to last batch
            summary["replica_rows_per_busy_s"] = rows_done / busy if busy else None
            # how full the batches and forward chunks were (max_batch_rows, max_rows_per_forward bound them)
            batches = info_after["batches"] - info_before["batches"]
            forwards = info_after["forwards"] - info_before["forwards"]
            summary["batches"], summary["forwards"] = batches, forwards
            summary["rows_per_batch"] = rows_done / batches if batches else None
            summary["rows_per_forward"] = rows_done / forwards if forwards else None
            # the accepted rate: rows the replica answered over the run's wall time (load start to drained,
            # i.e. to its last batch's end; the rate to the after-snapshot is kept beside it);
            # the client-side count over the fixed window (answers come a batch at a time: +- one batch) beside
            summary["accepted_rows_per_s"] = rows_done / wall
            summary["accepted_rows_per_s_to_snapshot"] = rows_done / summary["wall_to_snapshot_s"]
            summary["run_wall_s"] = wall
            runs[f"c{clients}"] = summary
            print(
                f"clients {clients}: {json.dumps({k: v for k, v in summary.items() if k != 'replica'})}",
                flush=True,
            )
            time.sleep(request_timeout_s / 4)  # let the queue drain between runs
        offline.append(_offline_rows_per_s(checkpoint, data_uri, offline_jobs, offline_rows, chunk))
        print(f"offline after: {offline[-1]}", flush=True)
    finally:
        serve.shutdown()
        shutdown_local_cluster()

    offline_rate = sum(o["rows_per_s"] for o in offline) / len(offline)
    for r in runs.values():
        r["accepted_rows_per_s_per_scorer_cpu"] = r["accepted_rows_per_s"] / SCORER_THREADS
        r["ratio_to_offline_per_actor"] = r["accepted_rows_per_s_per_scorer_cpu"] / offline_rate
        r["checks"] = {
            "timeouts_0": r["timeouts"] == 0,
            "success_within_request_timeout": r["every_success_within_request_timeout"],
            "refusal_within_1s": r["every_refusal_within_1s"],
            "rate_at_least_0.9_offline": r["ratio_to_offline_per_actor"] >= 0.9,
        }
    record = {
        "name": "serve_admission",
        "checkpoint": _checkpoint_identity(checkpoint),
        "serve_config": {
            "file": "serve.local.config",
            "user_config": {k: v for k, v in uc.items() if k != "checkpoint_uri"},
            "limits": limits,
            "max_ongoing_requests": scorer_d["max_ongoing_requests"],
            "request_timeout_s": request_timeout_s,
            "scorer_num_cpus": SCORER_THREADS,
        },
        "request": f"POST /v1/score, {ITEMS_PER_REQUEST} items, a known user with their stored history",
        "seconds_per_run": seconds,
        "client_niceness": client_niceness,
        "offline_scorer": {"runs": offline, "rows_per_s_per_actor": offline_rate},
        "runs": runs,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "command": command_line_of_admission(checkpoint, seconds, offline_rows),
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("serve_admission.json", json.dumps(record, indent=2) + "\n"),
        ("serve_admission.md", admission_markdown(record)),
    ):
        tmp = RESULTS / f".{name}.tmp"
        tmp.write_text(portable(text))
        tmp.replace(RESULTS / name)
    print(admission_markdown(record))
    return 0


def command_line_of_admission(checkpoint: str, seconds: float, offline_rows: int) -> str:
    return (
        f"python bench/bench_serve.py --admission --checkpoint <{Path(checkpoint).name}> "
        f"--seconds {seconds:g} --offline-rows {offline_rows}"
    )


def admission_markdown(record: dict) -> str:
    off = record["offline_scorer"]
    cfg = record["serve_config"]
    lines = [
        "# Serving admission in rows under overload (bench/bench_serve.py --admission)",
        "",
        f"serve.local.config as shipped: max_queued_rows {cfg['user_config']['max_queued_rows']}, "
        f"max_items {cfg['limits']['max_items']}, max_batch_rows {cfg['user_config']['max_batch_rows']}, "
        f"max_rows_per_forward {cfg['user_config']['max_rows_per_forward']}, request_timeout_s "
        f"{cfg['request_timeout_s']:g}, one scorer replica on {cfg['scorer_num_cpus']} CPU. Checkpoint: "
        f"{record['checkpoint']['base_llm']} (a jobs/train.py CoRA checkpoint, step {record['checkpoint']['step']}). Request: {record['request']}; "
        f"{record['seconds_per_run']:g} s per run; clients wait Retry-After after a 503. The clients run in "
        f"the benchmark's process at niceness {record.get('client_niceness', 0)}, as Ray runs Serve's processes "
        "(15): on this 2-core machine they compete with the scorer as equals, not ahead of it.",
        "",
        f"Offline Scorer, one CPU: {off['rows_per_s_per_actor']:.2f} rows/s "
        f"(before {off['runs'][0]['rows_per_s']:.2f}, after {off['runs'][-1]['rows_per_s']:.2f}).",
        "",
        "| clients | requests | 200 | 503/429 | timeouts | 200 p50 / max (s) | 503 max (s) | accepted rows/s per scorer CPU | ÷ offline | (fixed-window count) | replica busy | rows per busy s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in record["runs"].items():
        lines.append(
            f"| {name[1:]} | {r['requests']} | {r['succeeded']} | {r['refused_503_429']} | {r['timeouts']} | "
            f"{r['success_latency_s']['p50']:.1f} / {r['success_latency_s']['max']:.1f} | "
            f"{r['refusal_latency_s']['max']:.2f} | {r['accepted_rows_per_s_per_scorer_cpu']:.2f} | "
            f"{r['ratio_to_offline_per_actor']:.2f} | {r['accepted_rows_per_s_window']:.2f} | "
            f"{100 * r['replica_busy_fraction']:.0f}% | "
            f"{r['replica_rows_per_busy_s'] or 0:.2f} |"
        )
    lines += [
        "",
        "Accepted rows/s: rows the scorer replica answered over the run's wall time (load start to the end of its"
        " last batch, its counters in /v1/model; clients refused near the window's end sleep out their"
        " Retry-After before they stop, and that idle tail is left out; the rate to the after-snapshot is"
        " accepted_rows_per_s_to_snapshot in the JSON); beside it the clients' count of rows in 200 answers that ended in the fixed"
        " window / its length (answers come a batch at a time, so that count is off by up to one batch).",
        "Replica busy: the share of the run's wall time the scorer replica spent inside batches; rows per busy s:"
        " the replica's rate while busy (what the 0.9 × offline target compares against its share of a CPU"
        " that proxy, ingress, clients and other users' jobs also use).",
        "",
        "Checks per run (docs/deploy.md §6):",
        "",
    ]
    for name, r in record["runs"].items():
        lines.append(
            f"- {name[1:]} clients: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["checks"].items())
        )
    la = record["load_average"]
    lines += [
        "",
        f"Machine load average (1, 5, 15 min): before {tuple(round(x, 1) for x in la['before'])}, after "
        f"{tuple(round(x, 1) for x in la['after'])} — a shared 2-core machine; other engineers' jobs ran too.",
        "",
        f"Command: `{record['command']}`",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# --chunking: rows per forward chunk on the replica's own code path (ScoringEngine), one thread, no Serve
# ---------------------------------------------------------------------------------------------------------

CHUNKINGS = (8, 10, 20)  # max_rows_per_forward for a 20-row batch: 8 + 8 + 4, 10 + 10, one forward of 20


def run_chunking(checkpoint: str, rounds: int) -> int:
    """Rows/s of `ScoringEngine.score_jobs` (what a replica runs per batch) on 20-row batches of four
    5-item requests, for each max_rows_per_forward in CHUNKINGS, rounds interleaved in this process on one
    thread; writes bench/results/serve_chunking.{json,md} (value: chunks of 10, baseline: chunks of 8)."""
    path = _replica_path(checkpoint)
    checkpoint, jobs, per_batch = path.checkpoint, path.jobs, path.per_batch
    batch_rows = int(path.user_config["max_batch_rows"])
    rows = len(jobs) * ITEMS_PER_REQUEST
    engines = {c: path.engine(max_rows_per_forward=c) for c in CHUNKINGS}
    engines[CHUNKINGS[0]].score_jobs(jobs[:per_batch])  # warm up
    samples: dict[str, list[float]] = {f"chunk_{c}": [] for c in CHUNKINGS}
    for r in range(rounds):
        for c in CHUNKINGS if r % 2 == 0 else reversed(CHUNKINGS):
            t0 = time.perf_counter()
            for s in range(0, len(jobs), per_batch):
                engines[c].score_jobs(jobs[s : s + per_batch])
            samples[f"chunk_{c}"].append(rows / (time.perf_counter() - t0))
            print(f"chunk {c}: {samples[f'chunk_{c}'][-1]:.3f} rows/s", flush=True)
    mean = {k: sum(v) / len(v) for k, v in samples.items()}
    table = "\n".join(
        f"| {c} | {mean[f'chunk_{c}']:.3f} | {mean[f'chunk_{c}'] / mean['chunk_8']:.3f} |" for c in CHUNKINGS
    )
    write_result(
        "serve_chunking",
        value=mean["chunk_10"],
        baseline=mean["chunk_8"],
        unit="rows/s",
        config={
            "checkpoint": _checkpoint_identity(checkpoint),
            "batch_rows": batch_rows,
            "rows": rows,
            "rounds": rounds,
            "threads": SCORER_THREADS,
            "mean_rows_per_s": mean,
        },
        title="Rows per forward chunk on the replica's code path: 20-row batches, one thread (higher is better)",
        value_label="max_rows_per_forward 10 (10 + 10)",
        baseline_label="max_rows_per_forward 8 (8 + 8 + 4)",
        notes=(
            f"ScoringEngine.score_jobs on {rows} rows: {len(jobs)} requests of {ITEMS_PER_REQUEST} items, "
            f"{per_batch} per batch (serve.local.config's max_batch_rows {batch_rows}), {rounds} interleaved rounds.\n\n"
            "| max_rows_per_forward | rows/s | / chunks of 8 |\n|---|---|---|\n" + table
        ),
        samples=samples,
    )
    return 0


# ---------------------------------------------------------------------------------------------------------
# --bucket-scope: the offline reference's length bucketing against a replica's batch, one thread, no Serve
# ---------------------------------------------------------------------------------------------------------


def run_bucket_scope(checkpoint: str, rounds: int) -> int:
    """Rows/s of the same rows scored (a) in one `Scorer.score` call — --admission's offline reference, which
    orders all its rows by length before cutting chunks — (b) one call per replica batch (max_batch_rows rows),
    (c) `ScoringEngine.score_jobs` per batch (the replica's code path); chunks of max_rows_per_forward, one
    thread, rounds round-robin; writes bench/results/serve_bucket_scope.{json,md} (value (b), baseline (a))."""
    path = _replica_path(checkpoint)
    checkpoint, jobs, per_batch, scorer = path.checkpoint, path.jobs, path.per_batch, path.scorer
    batch_rows = int(path.user_config["max_batch_rows"])
    chunk = int(path.user_config["max_rows_per_forward"])
    users, items, hists = _job_rows(jobs)
    rows = len(items)
    engine = path.engine()

    def one_call() -> None:
        scorer.score(users, items, hists, batch_size=chunk)

    def per_replica_batch() -> None:
        for s in range(0, rows, batch_rows):
            e = s + batch_rows
            scorer.score(users[s:e], items[s:e], hists[s:e], batch_size=chunk)

    def replica_engine() -> None:
        for s in range(0, len(jobs), per_batch):
            engine.score_jobs(jobs[s : s + per_batch])

    fns = {"one_call": one_call, "per_batch": per_replica_batch, "engine_per_batch": replica_engine}
    one_call()  # warm up
    times = interleaved_times(fns, reps=rounds, warmup=0)
    samples = {k: [rows / t for t in v] for k, v in times.items()}  # rows/s per round
    mean = {k: sum(v) / len(v) for k, v in samples.items()}
    print(" ".join(f"{k} {v:.3f} rows/s;" for k, v in mean.items()), flush=True)
    write_result(
        "serve_bucket_scope",
        value=mean["per_batch"],
        baseline=mean["one_call"],
        unit="rows/s",
        config={
            "checkpoint": _checkpoint_identity(checkpoint),
            "batch_rows": batch_rows,
            "rows_per_forward": chunk,
            "rows": rows,
            "rounds": rounds,
            "threads": SCORER_THREADS,
            "mean_rows_per_s": mean,
        },
        title="Length bucketing: the offline reference (one call) vs a replica's batches, one thread (higher is better)",
        value_label=f"one Scorer.score call per {batch_rows}-row batch",
        baseline_label=f"one Scorer.score call over all {rows} rows",
        notes=(
            f"The same {rows} rows ({len(jobs)} requests of {ITEMS_PER_REQUEST} items, --admission's first), chunks "
            f"of {chunk}. The replica's own path (ScoringEngine.score_jobs per {batch_rows}-row batch): "
            f"{mean['engine_per_batch']:.3f} rows/s, {mean['engine_per_batch'] / mean['one_call']:.3f} of one call, "
            f"{mean['engine_per_batch'] / mean['per_batch']:.3f} of per-batch Scorer calls."
        ),
        samples=samples,
    )
    return 0


# ---------------------------------------------------------------------------------------------------------
# --scoring-thread: a replica's batch on the main thread vs in asyncio.to_thread, with and without one arena
# ---------------------------------------------------------------------------------------------------------

ARENA_SETTINGS = (None, "1")  # MALLOC_ARENA_MAX unset (glibc: 8 x cores arenas), then 1 (serve.local.config)


def _thread_rates(checkpoint: str, rounds: int) -> dict[str, float]:
    """In this process (one torch thread): rows/s of ScoringEngine.score_jobs on --admission's first 60 rows in
    20-row batches, called on the main thread and through asyncio.to_thread as a replica calls it; rounds
    interleaved, order alternating."""
    path = _replica_path(checkpoint)
    jobs, per_batch = path.jobs, path.per_batch
    rows = len(jobs) * ITEMS_PER_REQUEST
    engine = path.engine()
    batches = [jobs[s : s + per_batch] for s in range(0, len(jobs), per_batch)]

    def main_thread() -> float:
        t0 = time.perf_counter()
        for b in batches:
            engine.score_jobs(b)
        return rows / (time.perf_counter() - t0)

    async def in_thread() -> float:
        t0 = time.perf_counter()
        for b in batches:
            await asyncio.to_thread(engine.score_jobs, b)
        return rows / (time.perf_counter() - t0)

    engine.score_jobs(batches[0])  # warm up
    samples: dict[str, list[float]] = {"main_thread": [], "to_thread": []}
    for r in range(rounds):
        for mode in ("main_thread", "to_thread") if r % 2 == 0 else ("to_thread", "main_thread"):
            rate = main_thread() if mode == "main_thread" else asyncio.run(in_thread())
            samples[mode].append(rate)
    return {k: sum(v) / len(v) for k, v in samples.items()} | {"rows": rows, "rounds": rounds}


def run_scoring_thread(checkpoint: str, rounds: int) -> int:
    """`_thread_rates` in a fresh process per MALLOC_ARENA_MAX setting (glibc reads it at start); writes
    bench/results/serve_scoring_thread.{json,md} (value: to_thread with one arena; baseline: main thread, none)."""
    import subprocess

    per_setting: dict[str, dict] = {}
    for arena in ARENA_SETTINGS:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        env["OMP_NUM_THREADS"] = str(SCORER_THREADS)
        if arena is not None:
            env["MALLOC_ARENA_MAX"] = arena
        cmd = [sys.executable, __file__, "--scoring-thread-child", "--checkpoint", checkpoint]
        out = subprocess.run([*cmd, "--rounds", str(rounds)], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(
                f"--scoring-thread child (MALLOC_ARENA_MAX={arena}) failed:\n{out.stderr[-3000:]}"
            )
        name = f"arena_max_{arena or 'unset'}"
        per_setting[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"MALLOC_ARENA_MAX={arena}: {per_setting[name]}", flush=True)
    _write_scoring_thread(per_setting, _checkpoint_identity(checkpoint), rounds)
    return 0


def _write_scoring_thread(per_setting: dict[str, dict], checkpoint: dict, rounds: int) -> None:
    """serve_scoring_thread.{json,md}: to_thread / main thread within each process, one arena against glibc's
    default (absolute rates drift between processes on a shared machine; the ratio is taken within one)."""
    ratio = {k: r["to_thread"] / r["main_thread"] for k, r in per_setting.items()}
    unset = per_setting["arena_max_unset"]
    write_result(
        "serve_scoring_thread",
        value=ratio["arena_max_1"],
        baseline=ratio["arena_max_unset"],
        unit="x main-thread rows/s",
        config={
            "checkpoint": checkpoint,
            "threads": SCORER_THREADS,
            "rows": unset["rows"],
            "rounds": rounds,
            "per_setting": per_setting,
        },
        title="A replica's batches in asyncio.to_thread / on the main thread, by MALLOC_ARENA_MAX (higher is better)",
        value_label="to_thread / main thread, MALLOC_ARENA_MAX=1 (serve.local.config)",
        baseline_label="to_thread / main thread, MALLOC_ARENA_MAX unset",
        notes=(
            f"ScoringEngine.score_jobs on {unset['rows']} rows in 20-row batches, one torch thread, {rounds} "
            "interleaved rounds of main thread and asyncio.to_thread in one process, a fresh process per setting "
            "(absolute rates drift between processes on this shared machine; compare within a row).\n\n"
            "| MALLOC_ARENA_MAX | main thread rows/s | asyncio.to_thread rows/s | thread / main |\n|---|---|---|---|\n"
            + "\n".join(
                f"| {name.removeprefix('arena_max_')} | {r['main_thread']:.3f} | {r['to_thread']:.3f} | "
                f"{ratio[name]:.3f} |"
                for name, r in per_setting.items()
            )
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window per point")
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds for the on/off comparisons")
    parser.add_argument("--skip-components", action="store_true", help="skip the SmolLM2-shaped timing")
    parser.add_argument("--admission", action="store_true", help="the admission-in-rows measurement only")
    parser.add_argument("--checkpoint", help="--admission: the checkpoint to serve (a real SmolLM2 one)")
    parser.add_argument("--offline-rows", type=int, default=64, help="--admission: rows per offline timing")
    parser.add_argument(
        "--chunking", action="store_true", help="rows per forward chunk, offline (needs --checkpoint)"
    )
    parser.add_argument(
        "--bucket-scope",
        action="store_true",
        help="length bucketing over all rows vs per replica batch, offline (needs --checkpoint)",
    )
    parser.add_argument(
        "--scoring-thread",
        action="store_true",
        help="a batch on the main thread vs asyncio.to_thread, by MALLOC_ARENA_MAX (needs --checkpoint)",
    )
    parser.add_argument("--scoring-thread-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scoring_thread_child:
        print(json.dumps(_thread_rates(args.checkpoint, rounds=args.rounds)), flush=True)
        return 0
    if args.scoring_thread:
        if not args.checkpoint:
            parser.error("--scoring-thread needs --checkpoint")
        return run_scoring_thread(args.checkpoint, rounds=args.rounds)
    if args.bucket_scope:
        if not args.checkpoint:
            parser.error("--bucket-scope needs --checkpoint")
        return run_bucket_scope(args.checkpoint, rounds=args.rounds)
    if args.chunking:
        if not args.checkpoint:
            parser.error("--chunking needs --checkpoint")
        return run_chunking(args.checkpoint, rounds=args.rounds)
    if args.admission:
        if not args.checkpoint:
            parser.error("--admission needs --checkpoint")
        return run_admission(args.checkpoint, seconds=args.seconds, offline_rows=args.offline_rows)

    from ray import serve

    from cora_ray.ray_local import init_local_cluster, shutdown_local_cluster

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    t0 = time.time()
    setup = build_tiny_setup(work / "tiny", users=200, items=300)
    print(f"artifacts in {time.time() - t0:.0f} s", flush=True)

    from cora_ray.infer.service import Catalog, RequestLimits

    catalog = Catalog.from_dataset(setup.data_uri)
    limits = RequestLimits()
    users = sorted(catalog.user_ids)
    items = [r for r, i in catalog.item_ids.items() if catalog.title(i)]

    init_local_cluster(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
        },
    )
    port = harness.free_port()
    base = f"http://127.0.0.1:{port}"
    batch_on = {
        "max_batch_rows": 32,
        "batch_wait_timeout_s": 0.005,
        "max_rows_per_forward": 64,
        "cache_bytes": 0,
    }
    config = harness.app_config(port, setup.checkpoint_uri, setup.data_uri, scorer=batch_on)
    harness.start_serve(port)
    records = []
    try:
        harness.deploy(config)
        harness.wait_http(base)
        run_load(base, 4, 3, score_one(users, items), warmup=1)  # warm every process

        def use(**changes):
            harness.deploy(harness.with_user_config(config, **changes))

        common = {
            "model": "tiny test setup: random 2-layer LLaMA d_model 64, CoRA r 4, MF dim 16",
            "replicas": "1 scorer (num_cpus 0.5) + 1 ingress, 127.0.0.1",
            "clients": "closed-loop aiohttp in the benchmark process",
            "seconds_per_point": args.seconds,
        }

        # 1. throughput and latency vs concurrency (batching on, cache off: the shipped defaults)
        sweep = {}
        for clients in (1, 8, 32):
            sweep[clients] = run_load(base, clients, args.seconds, score_one(users, items))
            print(f"clients {clients}: {json.dumps(sweep[clients])}", flush=True)
        for clients, r in sweep.items():
            records.append(
                write_result(
                    f"serve_throughput_c{clients}",
                    value=r["throughput_rps"],
                    baseline=sweep[1]["throughput_rps"],
                    unit="req/s",
                    config={**common, "request": "POST /v1/score, 1 item", "scorer": batch_on, **r},
                    title=f"Serving throughput at {clients} concurrent client(s) (p50 {r['p50_ms']:.0f} ms, "
                    f"p99 {r['p99_ms']:.0f} ms)",
                    value_label=f"requests/s at {clients} clients",
                    baseline_label="requests/s at 1 client",
                    notes=f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, errors {r['errors'] or 0}.",
                )
            )

        # 2. dynamic batching on vs off at 32 clients: end to end over HTTP, and at the scorer deployment
        def measure(max_batch_rows: int, via: str):
            def fn():
                use(max_batch_rows=max_batch_rows, cache_bytes=0)
                if via == "http":
                    return run_load(base, 32, args.seconds, score_one(users, items))
                return run_handle_load(jobs, 32, args.seconds)

            return fn

        jobs = [catalog.resolve(u, [i], None, limits) for u, i in zip(users * 2, items, strict=False)]
        for via, name, what in (
            ("http", "serve_batching", "POST /v1/score, 1 item, 32 HTTP clients (proxy, ingress, scorer)"),
            (
                "handle",
                "serve_batching_scorer",
                "CoRAScorer.score via a DeploymentHandle, 1 row, 32 in flight",
            ),
        ):
            runs = alternate({"on": measure(32, via), "off": measure(1, via)}, args.rounds)
            on, off = pooled(runs["on"]), pooled(runs["off"])
            gain = on["throughput_rps"] / off["throughput_rps"]
            print(
                f"{name}: on {on['throughput_rps']:.1f} req/s, off {off['throughput_rps']:.1f} req/s",
                flush=True,
            )
            records.append(
                write_result(
                    name,
                    value=1000 / on["throughput_rps"],
                    baseline=1000 / off["throughput_rps"],
                    unit="ms/req",
                    config={
                        **common,
                        "request": what,
                        "on": {"max_batch_rows": 32, **{k: v for k, v in on.items() if k != "runs"}},
                        "off": {"max_batch_rows": 1, **{k: v for k, v in off.items() if k != "runs"}},
                        "runs": runs,
                    },
                    title=f"Dynamic batching across users ({via}): time per request at 32 clients, on vs off",
                    value_label=f"batching on (max_batch_rows 32): {on['throughput_rps']:.1f} req/s",
                    baseline_label=f"batching off (max_batch_rows 1): {off['throughput_rps']:.1f} req/s",
                    goal=0.25,
                    notes=(
                        f"Throughput gain {gain:.2f}x (goal >= 4x, i.e. ratio <= 0.25). p50 {on['p50_ms']:.0f} vs "
                        f"{off['p50_ms']:.0f} ms, p99 {on['p99_ms']:.0f} vs {off['p99_ms']:.0f} ms. Load average "
                        f"during the runs: {[round(r['load_average_1m'], 1) for r in runs['on'] + runs['off']]}."
                    ),
                )
            )

        # 3. G cache on vs off, users re-requesting overlapping candidates (8 clients)
        pattern = repeat_pattern(users, items)

        def measure_cache(cache_bytes: int):
            def fn():
                use(max_batch_rows=32, cache_bytes=cache_bytes)
                before = harness.request(base, "GET", "/v1/model")[1]["cache"]
                stats = run_load(base, 8, args.seconds, pattern)
                after = harness.request(base, "GET", "/v1/model")[1]["cache"]
                hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
                stats["cache"] = {**after, "window_hit_rate": hits / max(1, hits + misses)}
                return stats

            return fn

        runs = alternate({"on": measure_cache(64 << 20), "off": measure_cache(0)}, args.rounds)
        on, off = pooled(runs["on"]), pooled(runs["off"])
        hit_rates = [round(r["cache"]["window_hit_rate"], 4) for r in runs["on"]]
        print(
            f"cache on {on['rows_per_s']:.1f} rows/s (hit rate {hit_rates}), off {off['rows_per_s']:.1f}",
            flush=True,
        )
        records.append(
            write_result(
                "serve_cache",
                value=1000 / on["rows_per_s"],
                baseline=1000 / off["rows_per_s"],
                unit="ms/row",
                config={
                    **common,
                    "request": "POST /v1/score, 8 of a user's 12 fixed candidates, 8 users, 8 clients",
                    "on": {"cache_bytes": 64 << 20, **{k: v for k, v in on.items() if k != "runs"}},
                    "off": {"cache_bytes": 0, **{k: v for k, v in off.items() if k != "runs"}},
                    "hit_rates": hit_rates,
                    "runs": runs,
                },
                title="G cache on vs off under a repeat pattern: time per scored row (tiny model)",
                value_label=f"cache on: {on['rows_per_s']:.1f} rows/s",
                baseline_label=f"cache off: {off['rows_per_s']:.1f} rows/s",
                notes=(
                    f"Hit rate in each 'on' window (warm-up included): {hit_rates}. p50 {on['p50_ms']:.0f} vs "
                    f"{off['p50_ms']:.0f} ms. ratio < 1 means the cache helps."
                ),
            )
        )
    finally:
        serve.shutdown()
        shutdown_local_cluster()

    # 4. what the cache can save at SmolLM2-135M scale with the paper's generator (in-process)
    if not args.skip_components:
        import torch

        torch.set_num_threads(
            1
        )  # like a replica (OMP_NUM_THREADS=1); 2 threads on a shared 2-core box thrash
        comp = cache_components(work / "smollm2_shape", rows=8, reps=3)
        print(f"components: {json.dumps({k: v for k, v in comp.items() if k != 'samples'})}", flush=True)
        records.append(
            write_result(
                "serve_cache_components",
                value=comp["forward_with_G_s_per_row"],
                baseline=comp["forward_with_G_s_per_row"] + comp["generate_G_s_per_row"],
                unit="s",
                config={
                    "model": "random LLaMA with SmolLM2-135M's shape (30 layers, d_model 576, GQA 9/3, FFN 1536), "
                    "paper generator (k 4, N 8, d 512, FFN 3072), r 16, MF dim 256, fp32 CPU",
                    **{k: v for k, v in comp.items() if k != "samples"},
                },
                title="Per-row cost with G cached (forward only) vs generated (generator + forward), SmolLM2 shape",
                value_label="forward with G supplied (cache hit), per row",
                baseline_label="generate G + forward (cache miss), per row",
                samples=comp["samples"],
                notes=(
                    f"A cache hit saves at most {100 * comp['max_saving_fraction']:.2f}% of a row's time here; "
                    f"one G takes {comp['g_bytes_per_row'] / 1024:.0f} KiB."
                ),
            )
        )

    (RESULTS / "serve.md").write_text(
        "# Serving benchmarks (bench/bench_serve.py)\n\n"
        + summary_table(records)
        + "\nSee serve_*.md for each.\n"
    )
    print(summary_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
