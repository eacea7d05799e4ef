"""Feature serving next to Feast: the same features, the same Redis, 1 user + 50 products.

Two weeks of simulated traffic for 5,000 shoppers are folded into Tributary's
tiles; their ``user`` and ``product`` features as of the end of the history
are written both ways on the benchmark's Redis:

- Tributary: the tiles, under a profile of this benchmark's own, read by the
  streaming scorer's reader (one ``MGET`` for both views, decoded in process);
- Feast (``feast[redis]``, in its own virtualenv ``.tributary/feast-venv``,
  created when missing): the same values through ``write_to_online_store``,
  served by ``feast serve`` on a loopback port and asked with sequential
  ``POST /get-online-features`` requests (one request: 50 entity rows naming
  the user and a product each) by an ``httpx`` client in this process.

Feast's values are checked against Tributary's before timing. This measures
the feature fetch alone; the whole ``/v1/recommendations`` path (HTTP, features
and model) is ``tests/benchmarks/serving.py``'s. Run alone::

    python -m tests.benchmarks.feast_compare
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from redis import Redis

from flows.features.definitions import PRODUCT_VIEW, USER_VIEW, FeatureView
from flows.features.online import delete_view, write_entities
from flows.features.tiles import EntityTiles
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.settings import Settings
from serving.scorer_flow import RedisFeatureReader
from tests.local_stack import free_port

ROOT = Path(__file__).resolve().parents[2]
FEAST_VENV = ROOT / ".tributary" / "feast-venv"
FEAST_REQUIREMENT = "feast[redis]"
FEATURE_REPO_SCRIPT = Path(__file__).resolve().parent / "feast" / "feature_repo.py"
PROFILE = "bench-feast"
USERS = 5_000
CANDIDATES = 50
ANCHOR = datetime(2026, 5, 1, tzinfo=UTC)
REFERENCE = {"p50_ms": 7.0, "p99_ms": 11.6}  # Feast, 1 user + 50 products, from the issue
INSTALL_TIMEOUT_S = 600
START_TIMEOUT_S = 90


class FeastError(RuntimeError):
    """Feast could not be installed, set up or started; the message says why."""


def feast_python(venv: Path = FEAST_VENV) -> Path:
    """The Python of Feast's virtualenv, created and installed on first use."""
    python = venv / "bin" / "python"
    if (venv / "bin" / "feast").exists():
        return python
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", FEAST_REQUIREMENT],
    ]
    for command in steps:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise FeastError(f"{' '.join(command)} failed ({done.returncode}): {tail}")
    return python


def fold_history(events: int = 250_000, seed: int = 4) -> tuple[dict[str, EntityTiles], ...]:
    """Every shopper's and product's tiles after two weeks ending at :data:`ANCHOR`."""
    config = SimulationConfig(events=events, seed=seed, history_days=14, users=USERS, anchor=ANCHOR)
    users: dict[str, EntityTiles] = {}
    products: dict[str, EntityTiles] = {}
    for message in ShopSimulator(config).messages():
        if message.topic != "events":
            continue
        e = json.loads(message.value)
        ts = datetime.fromisoformat(e["event_ts"]).timestamp()
        for tiles, key in ((users, e["user_id"]), (products, e["product_id"])):
            state = tiles.get(key)
            if state is None:
                state = tiles[key] = EntityTiles()
            state.add(e["event_type"], ts, e["price"], e.get("quantity"))
    return users, products


def feature_table(view: FeatureView, states: dict[str, EntityTiles], as_of: float) -> pa.Table:
    """One row per entity: its id, the view's features as of ``as_of``, the time."""
    columns: dict[str, list[Any]] = {view.entity: list(states)}
    values = [tiles.features(view, as_of) for tiles in states.values()]
    types = {"int64": pa.int64(), "float64": pa.float64()}
    fields = [pa.field(view.entity, pa.string())]
    for name, dtype in view.dtypes.items():
        columns[name] = [row[name] for row in values]
        fields.append(pa.field(name, types[dtype]))
    columns["event_timestamp"] = [datetime.fromtimestamp(as_of, UTC)] * len(states)
    fields.append(pa.field("event_timestamp", pa.timestamp("us", tz="UTC")))
    return pa.Table.from_pydict(columns, schema=pa.schema(fields))


def feast_redis(settings: Settings) -> str:
    """The benchmark's Redis in Feast's ``host:port,db=N`` form."""
    address = settings.redis_address
    db = settings.redis_url.rsplit("/", 1)[-1] or "0"
    return f"{address.host}:{address.port},db={db}"


@contextmanager
def feast_server(python: Path, repo: Path) -> Iterator[str]:
    """``feast serve`` on a free loopback port until the block ends; yields its URL."""
    port = free_port()
    feast = python.parent / "feast"
    # one worker, as Tributary's API; no worker recycling in the middle of a timing
    command = [str(feast), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port)]
    command += ["--no-access-log", "--workers", "1", "--max-requests", "1000000"]
    log = repo / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(server, url, log)
        yield url
    finally:
        _stop(server)


def _wait_healthy(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise FeastError(f"feast serve exited {server.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise FeastError(f"feast serve did not answer /health in {START_TIMEOUT_S} s")


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def feast_request(user_id: str, product_ids: list[str]) -> dict[str, Any]:
    """One ``get-online-features`` body: a row per candidate, each naming the user too."""
    features = [f"{USER_VIEW.name}:{name}" for name in USER_VIEW.names]
    features += [f"{PRODUCT_VIEW.name}:{name}" for name in PRODUCT_VIEW.names]
    return {
        "features": features,
        "entities": {"user_id": [user_id] * len(product_ids), "product_id": product_ids},
        "full_feature_names": True,
    }


def feast_view_requests(user_id: str, product_ids: list[str]) -> list[dict[str, Any]]:
    """The same features as two bodies, one per view: the user's row, then the products'."""
    return [
        {
            "features": [f"{view.name}:{name}" for name in view.names],
            "entities": {view.entity: ids},
        }
        for view, ids in ((USER_VIEW, [user_id]), (PRODUCT_VIEW, product_ids))
    ]


def feast_values(answer: dict[str, Any]) -> dict[str, list[Any]]:
    """Feature name (``view__feature``) to its values, one per entity row."""
    names = answer["metadata"]["feature_names"]
    return {name: result["values"] for name, result in zip(names, answer["results"], strict=True)}


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return (a is None or (isinstance(a, float) and math.isnan(a))) and (
            b is None or (isinstance(b, float) and math.isnan(b))
        )
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def check_same_values(
    client: httpx.Client, url: str, reader: RedisFeatureReader, user_id: str, products: list[str]
) -> int:
    """Compare Feast's answer with Tributary's read; returns how many values agreed."""
    answer = client.post(f"{url}/get-online-features", json=feast_request(user_id, products))
    answer.raise_for_status()
    feast = feast_values(answer.json())
    users, by_product = reader.read([user_id], products, ANCHOR.timestamp())
    checked = 0
    for row, product_id in enumerate(products):
        for view, values in ((USER_VIEW, users[user_id]), (PRODUCT_VIEW, by_product[product_id])):
            for name in view.names:
                got = feast[f"{view.name}__{name}"][row]
                if not _same(got, values[name]):
                    raise FeastError(f"Feast serves {view.name}:{name}={got}, not {values[name]}")
                checked += 1
    return checked


def bench_feast_compare(settings: Settings, requests: int = 1000) -> dict[str, Any]:
    """Feast's and Tributary's p50/p99 for 1 user + 50 products; ``error`` when Feast fails."""
    try:
        python = feast_python()
    except (FeastError, OSError, subprocess.TimeoutExpired) as error:
        return {"error": f"Feast could not be installed: {error}"}
    bench = settings.model_copy(update={"profile": PROFILE})
    client = Redis.from_url(bench.redis_url)
    with tempfile.TemporaryDirectory(prefix="tributary-feast-") as folder:
        repo = Path(folder) / "repo"
        try:
            asks, tables, written = _load(client, bench, Path(folder), requests)
            # a serving process holds none of the simulation (see the features benchmark)
            gc.collect()
            gc.freeze()
            result = _measure(python, repo, feast_redis(bench), tables, bench, asks)
        except FeastError as error:
            return {"error": str(error)}
        finally:
            gc.unfreeze()
            if (repo / "registry.db").exists():
                subprocess.run([str(python), str(FEATURE_REPO_SCRIPT), "teardown", str(repo)],
                               capture_output=True, timeout=120, check=False)  # fmt: skip
            for view_name in ("user", "product"):
                delete_view(client, bench, view_name)
            client.close()
    return {**written, "candidates_per_request": CANDIDATES, **result}


def _load(
    client: Redis, bench: Settings, folder: Path, requests: int
) -> tuple[list[list[str]], dict[str, Path], dict[str, int]]:
    """Write the folded states to Redis and their features to parquet; the requests to time."""
    users, products = fold_history()
    write_entities(client, bench, [("user", uid, tiles) for uid, tiles in users.items()])
    write_entities(client, bench, [("product", pid, tiles) for pid, tiles in products.items()])
    tables = {}
    for view, states in ((USER_VIEW, users), (PRODUCT_VIEW, products)):
        tables[view.name] = folder / f"{view.name}.parquet"
        pq.write_table(feature_table(view, states, ANCHOR.timestamp()), tables[view.name])
    rng = random.Random(9)
    user_ids, product_ids = sorted(users), sorted(products)
    asks = [[rng.choice(user_ids), *rng.sample(product_ids, CANDIDATES)] for _ in range(requests)]
    return asks, tables, {"users": len(users), "products": len(products)}


def interleaved_ms(
    calls: Mapping[str, Callable[[list[str]], object]], asks: list[list[str]], warmup: int = 20
) -> dict[str, dict[str, float]]:
    """p50/p99 of each call over ``asks``, the calls taking turns on every ask.

    Taking turns spreads the machine's background load evenly over the contenders.
    """
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for index, ask in enumerate(asks):
        for name, call in calls.items():
            started = time.perf_counter()
            call(ask)
            if index >= warmup:
                samples[name].append((time.perf_counter() - started) * 1000)
    out = {}
    for name, values in samples.items():
        cuts = statistics.quantiles(values, n=100)
        out[name] = {"p50_ms": round(cuts[49], 3), "p99_ms": round(cuts[98], 3)}
    return out


def _measure(
    python: Path,
    repo: Path,
    redis: str,
    tables: dict[str, Path],
    bench: Settings,
    asks: list[list[str]],
) -> dict[str, Any]:
    started = time.perf_counter()
    apply = [str(python), str(FEATURE_REPO_SCRIPT), "apply", str(repo), redis]
    done = subprocess.run(
        [*apply, str(tables["user"]), str(tables["product"])],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise FeastError(f"feast apply/write failed: {(done.stderr or done.stdout)[-2000:]}")
    load_s = time.perf_counter() - started
    reader = RedisFeatureReader(bench)
    as_of = ANCHOR.timestamp()
    with feast_server(python, repo) as url, httpx.Client(timeout=10.0) as http:
        checked = check_same_values(http, url, reader, asks[0][0], asks[0][1:])

        def feast_one(ask: list[str]) -> None:
            body = feast_request(ask[0], ask[1:])
            http.post(f"{url}/get-online-features", json=body).raise_for_status()

        def feast_two(ask: list[str]) -> None:
            for body in feast_view_requests(ask[0], ask[1:]):
                http.post(f"{url}/get-online-features", json=body).raise_for_status()

        def feast_health(ask: list[str]) -> None:
            http.get(f"{url}/health").raise_for_status()

        def tributary(ask: list[str]) -> None:
            reader.read(ask[:1], ask[1:], as_of)

        calls = {
            "feast_one": feast_one,
            "feast_two": feast_two,
            "feast_health": feast_health,
            "tributary": tributary,
        }
        timings = interleaved_ms(calls, asks)
    return {
        "requests": len(asks),
        "values_checked_equal": checked,
        "feast": {
            "version": feast_version(python),
            "http_one_request_50_rows": timings["feast_one"],
            "http_two_requests_user_then_products": timings["feast_two"],
            "http_get_health_floor": timings["feast_health"],
            "load_online_store_s": round(load_s, 1),
            "issue_reference": REFERENCE,
        },
        "tributary": {"one_mget_decoded_in_process": timings["tributary"]},
    }


def feast_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import feast; print(feast.__version__)"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip()


if __name__ == "__main__":
    from tests.benchmarks.stack import benchmark_stack

    with benchmark_stack() as bench_settings:
        print(json.dumps(bench_feast_compare(bench_settings), indent=2))
