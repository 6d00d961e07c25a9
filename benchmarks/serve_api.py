"""Benchmark of the HTTP API on a local Ray Serve over loopback (Hydra-sweepable): create-job latency and
throughput under many concurrent clients, then a lost-job check.

    python benchmarks/serve_api.py                        # 100 clients, 5000 creates
    python benchmarks/serve_api.py -m clients=100,200

Starts a local Ray, the Serve proxy on 127.0.0.1 and ``wan_dist.serve.deploy.application`` (the API
ingress and a renderer of ``model``, which renders jobs while the API is measured; it falls behind, which
is fine: this measures the API). Limits (rate, burst, per-key and per-model queues) are set out of reach.
``clients`` asyncio clients share one httpx connection pool (one connection each) and each keeps one
``POST /v1/models/{model}/jobs`` in flight until ``creates`` were sent (a closed loop: by Little's law
p50 latency ~ clients / throughput). Then every 2xx answer's id is looked up in the store (read directly)
and through ``GET /v1/jobs`` paging: a lost job is an acknowledged id missing from either; the store must
hold exactly the acknowledged creates (a timed-out request whose job was stored shows as unacknowledged).
Appends a row to ``save_to`` (CSV; with the timestamp, machine and every setting: benchmarks/csv_rows.py)
and prints it; the 1-minute load average before and after says how
busy the machine was (other processes share it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from csv_rows import save_chart, save_row

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-bench"
APP_NAME = "wan-bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def _rate(stamps: list[float]) -> float:
    """Answers per second over a run of consecutive answer times (how throughput changes as the store fills)."""
    return round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 1) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0


async def _wait_ready(base_url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=10, trust_env=False) as client:
        while True:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the API at {base_url} was not ready after {timeout_s:g} s")
            await asyncio.sleep(0.5)


async def _load(cfg: DictConfig, base_url: str) -> dict:
    """Warm up, then ``creates`` creates from ``clients`` concurrent clients; latencies and answers."""
    import httpx

    path = f"/v1/models/{cfg.preset}/jobs"
    limits = httpx.Limits(max_connections=cfg.clients, max_keepalive_connections=cfg.clients)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def body(i: int) -> dict:
        return {"prompt": f"benchmark clip {i}: waves on a shore", "size": f"{cfg.width}x{cfg.height}",
                "num_frames": cfg.num_frames, "num_inference_steps": cfg.steps, "seed": i}

    accepted: list[str] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    latencies: list[float] = []
    done_at: list[float] = []  # when each measured create was answered (perf_counter)

    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=cfg.timeout_s,
                                 trust_env=False) as client:
        async def create(i: int, record: bool) -> None:
            start = time.perf_counter()
            try:
                response = await client.post(path, json=body(i))
            except httpx.HTTPError as error:
                errors[type(error).__name__] += 1
                return
            elapsed = time.perf_counter() - start
            statuses[response.status_code] += 1
            if 200 <= response.status_code < 300:
                accepted.append(response.json()["id"])
                if record:
                    latencies.append(elapsed)
                    done_at.append(start + elapsed)

        await asyncio.gather(*(create(cfg.creates + i, False) for i in range(cfg.warmup)))
        warm_statuses, statuses = statuses, Counter()
        counter = iter(range(cfg.creates))

        async def worker() -> None:
            for i in counter:  # shared: each create is taken by exactly one client
                await create(i, True)

        async def progress() -> None:  # a line every progress_s: answers so far, rate and p50 since the last
            seen = 0
            while True:
                await asyncio.sleep(cfg.progress_s)
                now, recent = time.perf_counter(), latencies[seen:]
                if recent:
                    print(f"{now - start:7.1f} s: {len(latencies)} creates, {len(recent) / cfg.progress_s:.1f}/s, "
                          f"p50 {_percentile(recent, 50) * 1e3:.0f} ms", flush=True)
                seen = len(latencies)

        start = time.perf_counter()
        reporter = asyncio.create_task(progress())
        await asyncio.gather(*(worker() for _ in range(cfg.clients)))
        wall = time.perf_counter() - start
        reporter.cancel()

        listed: set[str] = set()  # what the API itself lists for this key, page by page
        after = None
        while True:
            response = await client.get("/v1/jobs", params={"limit": 100, **({"after": after} if after else {})})
            response.raise_for_status()
            page = response.json()
            listed.update(job["id"] for job in page["data"])
            if not page["has_more"]:
                break
            after = page["last_id"]
    return {"accepted": accepted, "statuses": statuses, "warm_statuses": warm_statuses, "errors": errors,
            "latencies": latencies, "wall": wall, "listed": listed, "done_at": sorted(done_at)}


def _stored(store_uri: str) -> tuple[list[str], Counter]:
    """Every job id in the store (opened directly, as a second process), and the count of each status."""
    from wan_dist.serve.stores import open_store

    ids, by_status, after = [], Counter(), None
    with open_store(store_uri) as store:
        while True:
            jobs, more = store.list(limit=1000, after=after, order="asc")
            ids.extend(job.id for job in jobs)
            by_status.update(job.status for job in jobs)
            if not more or not jobs:
                return ids, by_status
            after = jobs[-1].id


def _run(cfg: DictConfig) -> dict:
    import ray
    from ray import serve

    from wan_dist.serve.deploy import application
    from wan_dist.serve.settings import AuthSettings, LimitSettings, ServeSettings

    if cfg.clients < 1 or cfg.creates < cfg.clients:
        raise SystemExit("need clients >= 1 and creates >= clients")
    out = Path(cfg.workdir) / f"{cfg.clients}-{cfg.creates}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    store = f"sqlite:///{out / 'jobs.db'}"
    settings = ServeSettings(models=(cfg.preset,), store=store, output=str(out / "clips"),
                             auth=AuthSettings(api_keys=(API_KEY,)),
                             limits=LimitSettings(rate_per_s=1e6, burst=10**6, max_active_per_key=10**6,
                                                  max_queue_per_model=10**6))
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()[0]
    ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, object_store_memory=300 * 2**20,
             log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = application(settings)
        if cfg.api_max_ongoing_requests is not None:  # compare Serve's per-replica admission limit of the ingress
            # Serve-private: the ingress Deployment an Application wraps (no public way to re-option a built app)
            app._bound_deployment = app._bound_deployment.options(max_ongoing_requests=cfg.api_max_ongoing_requests)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        asyncio.run(_wait_ready(base_url, cfg.ready_timeout_s))
        result = asyncio.run(_load(cfg, base_url))
        load_after = os.getloadavg()[0]
        stored, by_status = _stored(store)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()

    accepted, latencies = result["accepted"], result["latencies"]
    stored_set, accepted_set = set(stored), set(accepted)
    lost = len(accepted_set - stored_set)
    lost_in_listing = len(accepted_set - result["listed"])
    unacknowledged = len(stored_set - accepted_set)
    if not latencies:
        raise SystemExit(f"no create succeeded: {dict(result['statuses'])} {dict(result['errors'])}")
    non_2xx = {code: n for code, n in sorted(result["statuses"].items()) if not 200 <= code < 300}
    return {
        "model": cfg.preset, "clients": cfg.clients, "creates": cfg.creates,
        "api_max_ongoing_requests": cfg.api_max_ongoing_requests or "default",
        "size": f"{cfg.width}x{cfg.height}x{cfg.num_frames}", "steps": cfg.steps,
        "warmup": f"{cfg.warmup} ({';'.join(f'{c}:{n}' for c, n in sorted(result['warm_statuses'].items()))})",
        "accepted": len(latencies), "non_2xx": ";".join(f"{c}:{n}" for c, n in non_2xx.items()) or "0",
        "errors": ";".join(f"{k}:{n}" for k, n in sorted(result["errors"].items())) or "0",
        "p50_ms": round(_percentile(latencies, 50) * 1e3, 1), "p90_ms": round(_percentile(latencies, 90) * 1e3, 1),
        "p99_ms": round(_percentile(latencies, 99) * 1e3, 1), "max_ms": round(max(latencies) * 1e3, 1),
        "mean_ms": round(sum(latencies) / len(latencies) * 1e3, 1),
        "creates_per_s": round(len(latencies) / result["wall"], 1), "wall_s": round(result["wall"], 2),
        "creates_per_s_first_fifth": _rate(result["done_at"][:len(latencies) // 5]),
        "creates_per_s_last_fifth": _rate(result["done_at"][-(len(latencies) // 5):]),
        "jobs_in_store": len(stored), "acknowledged": len(accepted), "lost": lost,
        "lost_in_listing": lost_in_listing, "unacknowledged": unacknowledged,
        "rendered_meanwhile": by_status.get("completed", 0),
        "load1_before": round(load_before, 2), "load1_after": round(load_after, 2),
    }


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no log line per request (the client shares the CPUs)
    row = _run(cfg)
    path = save_row(row, config=OmegaConf.to_container(cfg, resolve=True), save_to=cfg.save_to)
    print(row)
    print(f"row appended to {path}")
    save_chart(path, "serve")
    print(f"{row['accepted']} creates from {row['clients']} clients: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
          f"{row['creates_per_s']} creates/s; non-2xx {row['non_2xx']}, errors {row['errors']}; "
          f"store holds {row['jobs_in_store']} of {row['acknowledged']} acknowledged, lost {row['lost']}")
    if row["lost"] or row["lost_in_listing"]:
        sys.exit(f"LOST JOBS: {row['lost']} missing from the store, {row['lost_in_listing']} from GET /v1/jobs")


if __name__ == "__main__":
    sys.exit(main())
