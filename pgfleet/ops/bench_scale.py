"""``pgfleet bench --scale N``: a backlog of N docs drained by the fleet, instead of the other
phases, with the embedded count and every process's resident memory and CPU time sampled as
it drains; its summary gives throughput in the first and last tenth of the docs and memory at
a tenth of the way and at the end.
"""

from __future__ import annotations

import time
from typing import Any

import schema
from pgfleet import corpus
from pgfleet.ops.bench_measure import Fleet, int8_version, reset, warm


def process_stats(pids: dict[str, int]) -> tuple[dict[str, float], dict[str, float]]:
    """Resident memory (MB) and CPU time used so far (s) of each fleet process and its
    children (the prefork pool), and of the PostgreSQL and Redis servers (all their
    processes together; shared buffers count once per PostgreSQL process that touched them,
    which overstates its memory: its trend is what matters)."""
    import psutil

    rss: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def add(name: str, proc) -> None:
        with proc.oneshot():
            rss[name] = rss.get(name, 0.0) + proc.memory_info().rss / 2**20
            times = proc.cpu_times()
            cpu[name] = cpu.get(name, 0.0) + times.user + times.system

    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            add(name, proc)
            for i, child in enumerate(proc.children(recursive=True)):
                add(f"{name}.child{i}", child)
        except psutil.Error:
            continue
    for proc in psutil.process_iter(["name"]):
        server = next((s for s in ("postgres", "redis") if s in (proc.info["name"] or "")), None)
        if server:
            try:
                add(server, proc)
            except psutil.Error:
                continue
    return ({k: round(v, 1) for k, v in rss.items()}, {k: round(v, 2) for k, v in cpu.items()})


def scale_phase(conn, home, env, conf, config, salt, result) -> None:
    """A backlog of ``config.scale`` docs inserted up front (in chunks of 10,000, each its
    own transaction), then drained by the fleet while the embedded count and the resident
    memory of every process are sampled every ``sample_s`` seconds."""
    from pgfleet.models import abtest

    base = (corpus.stdlib_paragraphs(5000) if config.texts == "paragraphs"
            else corpus.short_rows(5000))
    names: tuple[str, ...] = ("producer", "worker-gpu")
    if config.scale_engine == "int8":
        source, spec = int8_version(conn, conf)
        abtest.set_split(conn, source.name, {spec.version: 100})
        names = ("producer", "worker-cpu")
    samples: list[dict[str, Any]] = []
    with Fleet(home, env, names) as fleet:
        warm(conn, f"{salt}-scale")
        reset(conn)
        started = time.perf_counter()
        for start in range(0, config.scale, 10_000):
            chunk = [f"[{salt} #{i}] {base[i % len(base)]}"
                     for i in range(start, min(start + 10_000, config.scale))]
            conn.execute(schema.query("bench_insert_chunk"), (chunk,))
        inserted_s = time.perf_counter() - started
        # at least 20 docs/s, whatever --timeout says: a large run is meant to take long
        timeout_s = max(config.timeout_s, config.scale / 20)
        deadline = time.monotonic() + timeout_s
        done = 0
        first_sample = True
        while done < config.scale:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {config.scale} docs embedded after "
                                   f"{timeout_s:.0f} s")
            if not first_sample:
                time.sleep(config.sample_s)
            first_sample = False
            done = conn.execute(schema.query("bench_count_all_embedded")).fetchone()[0]
            rss, cpu = process_stats(fleet.supervisor.pids())
            samples.append({"t_s": round(time.perf_counter() - started, 1), "embedded": done,
                            "rss_mb": rss, "cpu_s": cpu})
        elapsed = time.perf_counter() - started
    result["scale"] = scale_summary(config, samples, elapsed, inserted_s)


def scale_summary(config, samples: list[dict[str, Any]], elapsed: float,
                   inserted_s: float) -> dict[str, Any]:
    """Throughput in the first and last tenth of the docs, and each process's memory at
    a tenth of the way and at the end: ratios near 1 mean no decay and no growth."""
    def rate_between(low: float, high: float) -> float | None:
        inside = [s for s in samples if low * config.scale <= s["embedded"] <= high * config.scale]
        if len(inside) < 2:
            return None  # too few samples in that window (a small run, or --sample-s too long)
        first, last = inside[0], inside[-1]
        return (last["embedded"] - first["embedded"]) / max(last["t_s"] - first["t_s"], 1e-9)

    early = next((s for s in samples if s["embedded"] >= config.scale / 10), samples[0])
    end = samples[-1]
    memory = {}
    for name, mb in end["rss_mb"].items():
        at_10 = early["rss_mb"].get(name)
        memory[name] = {"at_10pct_mb": at_10, "end_mb": mb,
                        "max_mb": max(s["rss_mb"].get(name, 0.0) for s in samples),
                        "end_to_10pct": round(mb / at_10, 3) if at_10 else None}
    first, last = rate_between(0.0, 0.1), rate_between(0.9, 1.0)
    # where the CPU went while the backlog drained (seconds per process)
    cpu = {name: round(end["cpu_s"].get(name, 0.0) - samples[0]["cpu_s"].get(name, 0.0), 1)
           for name in end["cpu_s"]}
    return {"docs": config.scale, "engine": config.scale_engine, "texts": config.texts,
            "insert_s": round(inserted_s, 1), "elapsed_s": round(elapsed, 1),
            "docs_per_s": round(config.scale / elapsed, 1),
            "first_tenth_docs_per_s": round(first, 1) if first else None,
            "last_tenth_docs_per_s": round(last, 1) if last else None,
            "throughput_last_to_first": round(last / first, 3) if first and last else None,
            "memory": memory, "cpu_s": cpu, "samples": samples}

