"""What ``pgfleet bench serve`` runs and times: the fleet with its HTTP API as real processes,
closed-loop HTTP clients, the bare engine in this process, and Celery round trips through
the broker to the worker.

* :class:`ServeFleet`: the producer, the torch worker and ``pgfleet serve``, started as
  ``pgfleet up`` starts them (:func:`~pgfleet.ops.supervisor.fleet_children`), with a new
  API key and the API's resident memory;
* :func:`closed_loop`: N concurrent clients (one asyncio task each, sharing one HTTP
  client: aiohttp's by default, httpx's with ``--client httpx``), each sending its next
  request as soon as the last one answered;
* :func:`bare_search` and :func:`bare_embeddings`: the same model in this process, with no
  HTTP, no key, no routing, no cache and no log;
* :func:`round_trips`: Celery messages sent to the worker's queue, timed until their result;
* :class:`Run`: one run's fleet, texts (unique to the run) and what each phase used: the
  API's memory and forward passes, and every process's CPU time.

:mod:`pgfleet.ops.bench_serve` puts them together into the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgfleet import corpus
from pgfleet.ops.bench_measure import engine_throughput
from pgfleet.ops.server_processes import free_port
from pgfleet.ops.supervisor import Supervisor, fleet_children

#: the fleet processes the serve bench runs
CHILDREN = ("producer", "worker-gpu", "api")


@dataclass
class ServeBenchConfig:
    clients: tuple[int, ...] = (1, 16, 64)
    docs: int = 5000
    seconds: float = 8.0
    warmup_s: float = 1.0
    k: int = 10
    ping_samples: int = 20
    timeout_s: float = 1800.0
    client: str = "aiohttp"
    logs_dir: Path | None = None


# ----------------------------------------------------------------------------- the fleet
class ServeFleet:
    """The producer, the torch worker and the HTTP API, as ``pgfleet up`` runs them."""

    def __init__(self, home: Path, env: dict[str, str], database_url: str, key_name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        specs = [s for s in fleet_children(flower_port=None, api_port=self.port)
                 if s.name in CHILDREN]
        self.supervisor = Supervisor(specs, env=env, log_dir=home / "logs")
        self.database_url = database_url
        self.key_name = key_name
        self.key = ""
        self.log = home / "logs" / "api.log"
        #: the embedded servers' pids (none when the URLs are configured)
        self.server_pids: dict[str, int] = {}

    def __enter__(self) -> ServeFleet:
        from pgfleet import db
        from pgfleet.api import keys

        with db.connect(self.database_url, autocommit=True) as conn:
            self.key = keys.create(conn, self.key_name)
        self.supervisor.start_all()
        try:
            self.wait_ready()
        except BaseException:
            self.supervisor.shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        from pgfleet import db
        from pgfleet.api import keys

        self.supervisor.shutdown()
        try:
            with db.connect(self.database_url, autocommit=True) as conn:
                keys.revoke(conn, self.key_name)
        except Exception:  # noqa: BLE001 - the run's figures matter more than the cleanup
            pass

    def health(self) -> dict[str, Any]:
        import json
        import urllib.request

        with urllib.request.urlopen(self.url + "/healthz", timeout=10) as reply:
            return json.loads(reply.read())

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until /healthz answers with an engine loaded (the API warms it at start)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = next(c.process for c in self.supervisor.children if c.spec.name == "api")
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"the API exited at start:\n{self.log_tail()}")
            try:
                if self.health().get("engines"):
                    return
            except (OSError, ValueError):  # urllib's URLError is an OSError
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the API did not load its engine in {timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def api_pid(self) -> int:
        return self.supervisor.pids()["api"]

    def api_rss_mb(self) -> float:
        import psutil

        return round(psutil.Process(self.api_pid()).memory_info().rss / 2**20, 1)

    def pass_sizes(self) -> dict[str, int]:
        """The API's forward passes so far, by how many texts they held (all engines)."""
        total: dict[str, int] = {}
        for engine in self.health().get("engines", []):
            for size, count in engine.get("passes", {}).items():
                total[str(size)] = total.get(str(size), 0) + int(count)
        return total

    def cpu_snapshot(self) -> tuple[dict[str, float], float]:
        """CPU seconds used so far by each fleet process (with its children: the worker's
        pool, PostgreSQL's backends), the embedded servers and this process (the HTTP
        clients, and the bare engine), and by the whole machine."""
        import psutil

        used: dict[str, float] = {}
        named = {**self.supervisor.pids(), **self.server_pids, "bench": os.getpid()}
        for name, pid in named.items():
            try:
                proc = psutil.Process(pid)
                procs = [proc] if name == "bench" else [proc, *proc.children(recursive=True)]
                total = 0.0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        times = p.cpu_times()
                        total += times.user + times.system
                used[name] = total
            except psutil.Error:
                continue
        machine = psutil.cpu_times()
        busy = machine.user + machine.system + getattr(machine, "nice", 0.0) + \
            getattr(machine, "irq", 0.0) + getattr(machine, "softirq", 0.0)
        return used, busy

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text("utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no API log)"


# ----------------------------------------------------------------------------- HTTP load
@dataclass
class Samples:
    """What a closed-loop run collected: client latencies of the answers that arrived in
    the measured window, the server's own figure for each (search: ``latency_ms``), errors."""

    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    cache_hits: int = 0
    errors: int = 0
    first_error: str | None = None
    window_s: float = 0.0


async def closed_loop(client, path: str, body: Callable[[int], dict[str, Any]], clients: int,
                      *, seconds: float | None = None, warmup_s: float = 0.0,
                      stop: asyncio.Event | None = None, read_server_ms: bool = False,
                      ) -> Samples:
    """``clients`` concurrent callers of ``POST path`` (``body(i)``: the i-th request's
    body), each sending its next request when the last one answers. Answers arriving in
    the first ``warmup_s`` are not counted; then it measures for ``seconds``, or until
    ``stop`` is set. Throughput is answers in the window over its length."""
    counter = itertools.count()
    samples = Samples()
    begin = time.perf_counter()
    start = begin + warmup_s
    end = start + seconds if seconds is not None else float("inf")

    def over() -> bool:
        return time.perf_counter() >= end or (stop is not None and stop.is_set())

    async def caller() -> None:
        while not over():
            sent = time.perf_counter()
            try:
                response = await client.post(path, json=body(next(counter)))
                ok, status = response.status_code == 200, f"HTTP {response.status_code}"
            except Exception as exc:  # noqa: BLE001 - counted, and the first one is reported
                ok, status, response = False, f"{type(exc).__name__}: {exc}", None
            done = time.perf_counter()
            if done < start or done > end:
                continue
            if not ok:
                samples.errors += 1
                if samples.first_error is None:
                    text = response.text[:300] if response is not None else ""
                    samples.first_error = f"{status} {text}".strip()
                continue
            samples.latencies_ms.append((done - sent) * 1000)
            if read_server_ms and response is not None:
                answer = response.json()
                samples.server_ms.append(float(answer.get("latency_ms", 0.0)))
                samples.cache_hits += bool(answer.get("cache_hit"))

    await asyncio.gather(*(caller() for _ in range(clients)))
    samples.window_s = min(time.perf_counter(), end) - start
    return samples


#: the load clients ``pgfleet bench serve --client`` can use
CLIENTS = ("aiohttp", "httpx")


@dataclass
class Reply:
    status_code: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    def raise_for_status(self) -> None:
        if self.status_code != 200:
            raise RuntimeError(f"HTTP {self.status_code}: {self.text[:300]}")


class HttpClient:
    """``clients`` keep-alive connections to the API with the run's key, through aiohttp
    or httpx. The clients run on the machine they measure: on 2 cores httpx's client cost
    the server 13% of its searches at 16 clients and 0.9 ms of each cache hit, against
    aiohttp's (docs/benchmarks.md), so aiohttp's is the default."""

    def __init__(self, url: str, key: str, clients: int, kind: str = "aiohttp"):
        if kind not in CLIENTS:
            raise ValueError(f"unknown HTTP client {kind!r}: one of {', '.join(CLIENTS)}")
        self.url, self.kind, self.clients = url, kind, clients
        self.headers = {"Authorization": f"Bearer {key}"}
        self._session: Any = None

    async def __aenter__(self) -> HttpClient:
        if self.kind == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                self.url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=120),
                connector=aiohttp.TCPConnector(limit=self.clients))
        else:
            import httpx

            self._session = httpx.AsyncClient(
                base_url=self.url, headers=self.headers, timeout=120.0,
                limits=httpx.Limits(max_connections=self.clients,
                                    max_keepalive_connections=self.clients))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "aiohttp":
            await self._session.close()
        else:
            await self._session.aclose()

    async def post(self, path: str, json: dict[str, Any]) -> Reply:
        if self.kind == "aiohttp":
            async with self._session.post(path, json=json) as response:
                return Reply(response.status, await response.read())
        response = await self._session.post(path, json=json)
        return Reply(response.status_code, response.content)


def http_client(url: str, key: str, clients: int, kind: str = "aiohttp") -> HttpClient:
    return HttpClient(url, key, clients, kind)


# ----------------------------------------------------------------------------- bare engine
def bare_search(conn, engine, spec, queries: list[str], k: int, seconds: float
                ) -> tuple[list[float], float]:
    """One query at a time in this process, for ``seconds``: the version's engine encodes
    it and the fleet's own pgvector query (:mod:`pgfleet.embedding.search`) finds its k
    nearest. Latencies (ms) and the elapsed time."""
    from pgfleet.embedding.search import nearest  # the very query the API runs

    latencies = []
    started = time.perf_counter()
    for query in itertools.cycle(queries):
        if time.perf_counter() - started >= seconds:
            break
        sent = time.perf_counter()
        vector = engine.encode([query])[0]
        nearest(conn, spec, vector, k)
        latencies.append((time.perf_counter() - sent) * 1000)
    return latencies, time.perf_counter() - started


def bare_embeddings(engine, texts: list[str], batch_sizes: tuple[int, ...]) -> dict[int, float]:
    """texts/s of the engine's own ``encode`` on batches of each size (one run each)."""
    engine.encode(texts[:max(batch_sizes)])  # warm-up
    return {size: engine_throughput(engine, texts, size, repeats=1) for size in batch_sizes}


# ----------------------------------------------------------------------------- the broker
#: ``celery.ping`` (from celery.contrib.testing) is not one of the fleet's tasks: the
#: worker's main process answers it itself (NotRegistered, stored as its result), so its
#: round trip is the broker's and the consumer's, without a pool process
PING = "celery.ping"


def round_trips(app, queue: str, *, count: int | None = None,
                stop: threading.Event | None = None, task: str = PING,
                args: tuple = (), timeout_s: float = 600.0, gap_s: float = 0.05,
                ) -> list[float]:
    """Milliseconds from sending ``task`` to ``queue`` until its result is back, one after
    the other: ``count`` of them, or until ``stop`` is set (the one in flight then still
    counts: it is what a caller would have waited)."""
    latencies: list[float] = []
    while (count is None or len(latencies) < count) and not (stop and stop.is_set()):
        sent = time.perf_counter()
        result = app.send_task(task, args=args, queue=queue, ignore_result=False)
        try:
            result.get(timeout=timeout_s, propagate=False, disable_sync_subtasks=False)
        finally:
            result.forget()
        latencies.append((time.perf_counter() - sent) * 1000)
        time.sleep(gap_s)
    return latencies


class Pinger(threading.Thread):
    """:func:`round_trips` in the background, until :meth:`finish`."""

    def __init__(self, app, queue: str, delay_s: float = 1.0, gap_s: float = 0.5,
                 **kwargs: Any):
        super().__init__(name="bench-pinger", daemon=True)
        kwargs["gap_s"] = gap_s  # a few a second: the worker logs each one it cannot run
        self.app, self.queue, self.delay_s, self.kwargs = app, queue, delay_s, kwargs
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if not self.stop.wait(self.delay_s):
                self.latencies = round_trips(self.app, self.queue, stop=self.stop,
                                             **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self, timeout_s: float = 120.0) -> list[float]:
        self.stop.set()
        self.join(timeout_s)
        if self.error is not None:
            raise self.error
        return self.latencies


# ----------------------------------------------------------------------------- a run
def pass_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """The API's forward passes between two reads of /healthz: how many, texts per pass."""
    counts = {int(size): after.get(size, 0) - before.get(size, 0) for size in after}
    counts = {size: n for size, n in counts.items() if n > 0}
    passes = sum(counts.values())
    texts = sum(size * n for size, n in counts.items())
    return {"passes": passes, "texts": texts,
            "texts_per_pass": round(texts / passes, 2) if passes else None,
            "largest": max(counts) if counts else None}


def cpu_delta(before: tuple[dict[str, float], float], after: tuple[dict[str, float], float],
              window_s: float) -> dict[str, Any]:
    """CPU seconds each process used between two snapshots, what the rest of the machine
    used (``others``: anything not this run's, e.g. other tests on a shared machine), and
    the cores the run kept busy on average."""
    (mine_0, machine_0), (mine_1, machine_1) = before, after
    used = {name: round(mine_1[name] - mine_0.get(name, 0.0), 2) for name in mine_1}
    ours = sum(used.values())
    return {"seconds": round(window_s, 2), "cpu_s": used,
            "others_cpu_s": round(max(0.0, machine_1 - machine_0 - ours), 2),
            "cores_busy": round((machine_1 - machine_0) / window_s, 2) if window_s > 0 else None}


class Run:
    """One run's state: the fleet, its texts, the report as it fills."""

    def __init__(self, config: ServeBenchConfig, fleet: ServeFleet, conn, celery_app,
                 salt: str, texts: tuple[list[str], list[str]]):
        self.config, self.fleet, self.conn, self.celery = config, fleet, conn, celery_app
        self.salt = salt
        self.queries, self.base = texts
        self.paragraphs = self.base[:256]
        self.rss: dict[str, dict[str, float]] = {}
        self.cpu: dict[str, dict[str, Any]] = {}
        self.passes: dict[str, dict[str, Any]] = {}
        self._n = 0

    def query(self, i: int) -> str:
        return f"[{self.salt} q{i}] {self.queries[i % len(self.queries)]}"

    def paragraph(self, i: int) -> str:
        return f"[{self.salt} e{i}] {self.paragraphs[i % len(self.paragraphs)]}"

    def phase(self, name: str, work: Callable[[], Any]) -> Any:
        """``work()``, with the API's memory, its forward passes and every process's CPU
        time before and after."""
        with self.measured(name):
            return work()

    @contextlib.contextmanager
    def measured(self, name: str) -> Iterator[None]:
        rss, passes = self.fleet.api_rss_mb(), self.fleet.pass_sizes()
        cpu, started = self.fleet.cpu_snapshot(), time.perf_counter()
        yield
        self.cpu[name] = cpu_delta(cpu, self.fleet.cpu_snapshot(),
                                   time.perf_counter() - started)
        self.rss[name] = {"start_mb": rss, "end_mb": self.fleet.api_rss_mb()}
        self.passes[name] = pass_delta(passes, self.fleet.pass_sizes())

    def backlog_texts(self, label: str) -> list[str]:
        return [f"[{self.salt} {label}] {t}" for t in self.base[:self.config.docs]]

    def pings(self, task: str = "celery.ping", args: tuple = ()) -> list[float]:
        from workers.queues import QUEUE_GPU

        return round_trips(self.celery, QUEUE_GPU, count=self.config.ping_samples, task=task,
                           args=args, gap_s=0.05)

    async def load(self, endpoint: str, clients: int, **kwargs: Any) -> Samples:
        """Closed-loop clients on one endpoint; every request's text unique to the run."""
        start = self._n
        self._n += 10_000_000  # room for any phase's requests: no text is sent twice
        if endpoint == "search":
            path, read = "/v1/search", True

            def body(i: int) -> dict[str, Any]:
                return {"query": self.query(start + i), "k": self.config.k}
        else:
            path, read = "/v1/embeddings", False

            def body(i: int) -> dict[str, Any]:
                return {"model": "all-minilm-l6-v2", "input": self.paragraph(start + i),
                        "encoding_format": "base64"}
        async with http_client(self.fleet.url, self.fleet.key, clients,
                               self.config.client) as client:
            samples = await closed_loop(client, path, body, clients, read_server_ms=read,
                                        **kwargs)
        if samples.errors and not samples.latencies_ms:
            raise RuntimeError(f"every {endpoint} request failed: {samples.first_error}\n"
                               f"{self.fleet.log_tail()}")
        return samples


def texts_for(config: ServeBenchConfig) -> tuple[list[str], list[str]]:
    """Short queries (a docstring's first sentence, at most 8 words) and paragraphs: the
    backlog's, the first of which the embeddings requests send."""
    queries = [" ".join(t.split()[:8]) for t in corpus.short_rows(2000)]
    paragraphs = corpus.stdlib_paragraphs(max(config.docs, 256))
    if len(paragraphs) < config.docs:
        raise RuntimeError(f"only {len(paragraphs)} paragraphs available, asked for "
                           f"{config.docs}")
    return queries, paragraphs
