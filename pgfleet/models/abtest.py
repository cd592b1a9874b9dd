"""Model versions in A/B tests: set a split, promote, roll back, retire, and the report.

Every change runs in one transaction; the database checks at commit that the active traffic
of the name sums to 100. Activating a version (serving or ``shadow``) queues a backfill of
every doc for it, behind live changes, and builds its index without blocking writers; a
promoted version's predecessors stay active as shadows, so their vectors stay complete and a
rollback is instant. No step waits without bound for another session (see ``set_split``).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

import schema
from pgfleet import db
from pgfleet.db import vector_index
from pgfleet.errors import PgfleetError, UnknownModelVersion
from pgfleet.models import splits, stats


class SplitError(PgfleetError):
    """A split that cannot be applied."""


def _versions(conn: psycopg.Connection, name: str, *, lock: bool = False
              ) -> list[dict[str, Any]]:
    """Every version of model ``name``, in id order; with ``lock``, locked for a change of
    its split (FOR NO KEY UPDATE, which a worker's write of vectors does not wait for)."""
    rows = db.fetch_all(conn, "split_versions_for_change" if lock else "split_versions",
                        {"name": name})
    if not rows:
        raise UnknownModelVersion(f"no model named {name!r}")
    return rows


def current_split(conn: psycopg.Connection, name: str) -> dict[str, int]:
    return {v["version"]: v["traffic_percent"] for v in _versions(conn, name) if v["active"]}


#: how long a split change waits for a lock, for in-flight writers of docs, or for the
#: index build, before it says who held it up (PGFLEET_AB_LOCK_WAIT_S)
DEFAULT_WAIT_S = 10.0
#: how often the wait for in-flight writers looks again
POLL_S = 0.05


def set_split(conn: psycopg.Connection, name: str, split: dict[str, int],
              action: str = "set", *, wait_s: float = DEFAULT_WAIT_S) -> dict[str, Any]:
    """Apply ``{"v1": 80, "v2": 20, "v3": 0 (shadow)}``; versions left out are deactivated
    (their vectors are kept until they are retired).

    The connection must not be in a transaction (the index is built outside one). Nothing
    waits unboundedly: a lock held elsewhere makes the change fail after ``wait_s`` naming
    its holder; in-flight writers of docs and the index build are waited for at most
    ``wait_s`` each, and the answer's ``problems`` says who held them up."""
    with vector_index.autocommit(conn):
        versions, activated, in_flight = _apply(conn, name, split, action, wait_s)
        problems: list[str] = []
        backfilled: dict[str, int] = {}
        if activated:
            waited = _wait_for_writers(conn, in_flight, wait_s)
            if waited:
                problems.append(
                    f"{len(waited)} transaction(s) that were writing docs when "
                    f"{', '.join(activated)} became active had not ended after {wait_s:g} s: "
                    f"{vector_index.describe(waited)}; the docs they insert are queued for "
                    "the new version(s) by the reconciler (within PGFLEET_RECONCILE_INTERVAL_S) "
                    "once they commit")
            try:
                backfilled = _backfill(conn, [versions[v] for v in activated], wait_s)
            except psycopg.errors.LockNotAvailable:
                # an uncommitted change of a doc queued the same (doc, version) first
                holders = _lock_holders(conn, "pending_embeddings")
                problems.append(
                    f"the backfill of {', '.join(activated)} was not queued: it waited more "
                    f"than {wait_s:g} s for {vector_index.describe(holders) or 'a lock'}; the "
                    "reconciler queues it (within PGFLEET_RECONCILE_INTERVAL_S)")
        indexes = {}
        source_indexes: dict[str, dict[str, dict[str, Any]]] = {}
        for version in split:
            if versions[version]["kind"] != "embedding":
                continue
            outcome = vector_index.ensure_version_index(conn, versions[version]["id"],
                                                        lock_timeout_s=wait_s)
            indexes[version] = {"name": outcome.name, "valid": outcome.valid}
            if outcome.problem:
                problems.append(f"{name}@{version}: {outcome.problem}")
            # and the index of each source this model embeds, for the version
            for source in db.fetch_all(conn, "sources_of_model", {"model_name": name}):
                outcome = vector_index.ensure_source_index(
                    conn, source["id"], versions[version]["id"], lock_timeout_s=wait_s)
                source_indexes.setdefault(source["name"], {})[version] = {
                    "name": outcome.name, "valid": outcome.valid}
                if outcome.problem:
                    problems.append(f"{name}@{version}, source {source['name']}: "
                                    f"{outcome.problem}")
    return {"name": name, "split": split, "backfill_queued": backfilled, "indexes": indexes,
            "source_indexes": source_indexes, "problems": problems}


def _apply(conn: psycopg.Connection, name: str, split: dict[str, int], action: str,
           wait_s: float
           ) -> tuple[dict[str, dict[str, Any]], list[str], list[dict[str, Any]]]:
    """The split's own transaction: the versions by label, those it activated, and the
    transactions that were writing docs when it committed."""
    try:
        with conn.transaction():
            with vector_index.lock_timeout(conn, wait_s, local=True):
                versions = {v["version"]: v for v in _versions(conn, name, lock=True)}
                unknown = sorted(set(split) - set(versions))
                if unknown:
                    raise SplitError(f"{name} has no version {', '.join(unknown)}; known: "
                                     f"{', '.join(versions)}")
                for version in split:
                    if versions[version]["status"] != "ready":
                        raise SplitError(f"{name}@{version} is {versions[version]['status']}, "
                                         "not ready")
                was_active = {v for v, row in versions.items() if row["active"]}
                conn.execute(schema.query("clear_split"), {"name": name})
                activated = []
                for version, percent in split.items():
                    conn.execute(schema.query("activate_version"),
                                 {"traffic_percent": percent,
                                  "version_id": versions[version]["id"]})
                    if version not in was_active and versions[version]["kind"] == "embedding":
                        activated.append(version)
                conn.execute(schema.query("drop_inactive_pending"))
                conn.execute(schema.query("record_split"),
                             {"name": name, "split": Jsonb(split), "action": action})
    except psycopg.errors.LockNotAvailable:
        raise _blocked(conn, f"{name}: the split was not changed", wait_s) from None
    # From the commit above, every new insert queues work for the new versions (the
    # trigger sees them active). Transactions that wrote docs before it may have inserted
    # rows the trigger queued for the old split only: they are the ones holding a writer's
    # lock on docs now, and the backfill waits for them (never for writers that come after).
    return versions, activated, vector_index.writers(conn, "docs") if activated else []


def _blocked(conn: psycopg.Connection, what: str, wait_s: float) -> SplitError:
    """The error for a change that waited ``wait_s`` for a lock: who held it."""
    holders = _lock_holders(conn, "model_versions", "pending_embeddings")
    return SplitError(f"{what}: a lock stayed held for more than {wait_s:g} s"
                      + (f" by {vector_index.describe(holders)}" if holders else "")
                      + "; end that transaction, or try again")


def _lock_holders(conn: psycopg.Connection, *tables: str) -> list[dict[str, Any]]:
    """The sessions that may hold a row lock on these tables (each once)."""
    seen: dict[str, dict[str, Any]] = {}
    for table in tables:
        for holder in vector_index.lockers(conn, table):
            seen.setdefault(holder["virtualtransaction"], holder)
    return list(seen.values())


def _backfill(conn: psycopg.Connection, versions: list[dict[str, Any]], wait_s: float
              ) -> dict[str, int]:
    """Queue every doc missing a vector of these versions, behind live changes."""
    queued: dict[str, int] = {}
    with conn.transaction(), vector_index.lock_timeout(conn, wait_s, local=True):
        for version in versions:
            queued[version["version"]] = conn.execute(
                schema.query("reconcile_missing"), {"version_id": version["id"]}).rowcount
        conn.execute(schema.query("notify_pending"))
    return queued


def _wait_for_writers(conn: psycopg.Connection, holders: list[dict[str, Any]],
                      wait_s: float) -> list[dict[str, Any]]:
    """Wait (polling, at most ``wait_s``) until these transactions have ended, as CREATE
    INDEX CONCURRENTLY waits for lockers; new writers never queue behind this wait. The
    ones still open at the end, as they are now."""
    vxids = [h["virtualtransaction"] for h in holders]
    deadline = time.monotonic() + wait_s
    while vxids:
        vxids = sorted(vector_index.still_open(conn, vxids))
        if not vxids or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    if not vxids:
        return []
    now = {h["virtualtransaction"]: h for h in vector_index.writers(conn, "docs")}
    return [now.get(v, h) for v in vxids
            for h in holders if h["virtualtransaction"] == v]


def promote(conn: psycopg.Connection, name: str, version: str, *,
            wait_s: float = DEFAULT_WAIT_S) -> dict[str, Any]:
    """All traffic to ``version``; the versions that served before stay as shadows."""
    split = {v: 0 for v in current_split(conn, name)}
    split[version] = 100
    return set_split(conn, name, split, action="promote", wait_s=wait_s)


def rollback(conn: psycopg.Connection, name: str, *,
             wait_s: float = DEFAULT_WAIT_S) -> dict[str, Any]:
    """Restore the split that was in force before the last change."""
    rows = db.fetch_all(conn, "last_splits", {"name": name})
    if len(rows) < 2:
        raise SplitError(f"{name} has no earlier split to roll back to")
    return set_split(conn, name, rows[1]["split"], action="rollback", wait_s=wait_s)


def retire(conn: psycopg.Connection, name: str, version: str, *,
           wait_s: float = DEFAULT_WAIT_S) -> None:
    try:
        _retire(conn, name, version, wait_s)
    except psycopg.errors.LockNotAvailable:
        raise _blocked(conn, f"{name}@{version} was not retired", wait_s) from None


def _retire(conn: psycopg.Connection, name: str, version: str, wait_s: float) -> None:
    with conn.transaction(), vector_index.lock_timeout(conn, wait_s, local=True):
        ref = {"name": name, "version": version}
        row = db.fetch_one(conn, "version_traffic_for_retire", ref)
        if row is None:
            raise UnknownModelVersion(f"no version {name}@{version}")
        if row["traffic_percent"] > 0:
            raise SplitError(f"{name}@{version} still serves {row['traffic_percent']}% of the "
                             "traffic; move it elsewhere first (pgfleet ab set)")
        conn.execute(schema.query("retire_version"), ref)
        conn.execute(schema.query("drop_inactive_pending"))


def backfill_pending(conn: psycopg.Connection, version_id: int) -> int:
    """How many docs the backfill of this version has left to embed."""
    return int(_one(conn, "backfill_pending", {"version_id": version_id})["pending"])


def _one(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> dict[str, Any]:
    """The row of a query that always returns one (an aggregate)."""
    row = db.fetch_one(conn, query, params)
    if row is None:
        raise AssertionError(f"{query} returned no row")
    return row


def report(conn: psycopg.Connection, name: str, since: dt.timedelta) -> dict[str, Any]:
    """Per version: requests, latency (mean, p50, p95), cache hit rate, errors, feedback and
    MRR; and each candidate against the control (the version with the most traffic)."""
    versions = _versions(conn, name)
    by_id = {v["id"]: v for v in versions}
    if versions and versions[0]["kind"] == "text2sql":
        return _text2sql_report(conn, name, versions, since)
    logs = db.fetch_all(conn, "report_search_logs",
                        {"since": since, "version_ids": list(by_id)})
    chosen: dict[int, list[int]] = {}
    for pick in db.fetch_all(conn, "report_chosen_docs",
                             {"log_ids": [r["id"] for r in logs]}):
        chosen.setdefault(pick["log_id"], []).append(pick["doc_id"])
    entries: list[dict[str, Any]] = []
    samples: dict[str, tuple[list[float], list[float]]] = {}
    for v in versions:
        rows = [r for r in logs if r["version_id"] == v["id"]]
        if not rows and not v["active"]:
            continue
        latencies = [float(r["latency_ms"]) for r in rows if r["error"] is None]
        ranks = [stats.reciprocal_rank(r["results"] or [], chosen[r["id"]])
                 for r in rows if r["id"] in chosen]
        samples[v["version"]] = (latencies, ranks)
        counts = _one(conn, "version_coverage", {"version_id": v["id"]})
        entries.append({
            "version": v["version"], "active": v["active"], "traffic_percent": v["traffic_percent"],
            "shadow": v["active"] and v["traffic_percent"] == 0, "requests": len(rows),
            "latency_ms": {"mean": _round(sum(latencies) / len(latencies)) if latencies else None,
                           "p50": _round(stats.percentile(latencies, 50)) if latencies else None,
                           "p95": _round(stats.percentile(latencies, 95)) if latencies else None},
            "cache_hit_rate": _round(sum(1 for r in rows if r["cache_hits"]) / len(rows))
            if rows else None,
            "errors": sum(1 for r in rows if r["error"] is not None),
            "feedback": len(ranks),
            "mrr": _round(sum(ranks) / len(ranks)) if ranks else None,
            "click_through": _round(len(ranks) / len(rows)) if rows else None,
            "coverage": _coverage(counts["embedded"], counts["docs"]),
            "backfill_pending": backfill_pending(conn, v["id"]),
        })
    comparisons = []
    control = _control(entries)
    if control is not None:
        for entry in entries:
            candidate = entry["version"]
            if candidate == control or not samples[candidate][0]:
                continue
            speed = quality = None
            if len(samples[control][0]) >= 2 and len(samples[candidate][0]) >= 2:
                speed = stats.bootstrap_ratio_of_means(samples[control][0], samples[candidate][0])
            if len(samples[control][1]) >= 2 and len(samples[candidate][1]) >= 2:
                quality = stats.bootstrap_difference(samples[control][1], samples[candidate][1])
            comparisons.append({
                "candidate": candidate, "control": control,
                "faster_by": _interval(speed), "mrr_difference": _interval(quality),
                "verdict": stats.verdict(candidate, control, speed, quality)})
    return {"name": name, "since_s": since.total_seconds(), "versions": entries,
            "comparisons": comparisons}


def _control(entries: list[dict[str, Any]]) -> str | None:
    """The version the others are compared with: the one serving the most traffic, the
    oldest on a tie (the entries are in id order)."""
    control = splits.leader([e for e in entries if e["traffic_percent"] > 0],
                            lambda e: e["traffic_percent"])
    return control["version"] if control else None


def _text2sql_report(conn: psycopg.Connection, name: str, versions: list[dict[str, Any]],
                     since: dt.timedelta) -> dict[str, Any]:
    """Per text2sql version: requests, latency, how many got SQL that passed the guard
    (``answered``), and the held-out execution accuracy measured when it was trained; and
    each candidate's latency against the control's."""
    by_id = {v["id"]: v for v in versions}
    ids = {"version_ids": list(by_id)}
    logs = db.fetch_all(conn, "report_text2sql_logs", {"since": since, **ids})
    metrics: dict[int, dict[str, Any]] = {
        r["id"]: r["metrics"] for r in db.fetch_all(conn, "report_version_metrics", ids)}
    entries: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {}
    for v in versions:
        rows = [r for r in logs if r["version_id"] == v["id"]]
        if not rows and not v["active"]:
            continue
        times = [float(r["latency_ms"]) for r in rows]
        latencies[v["version"]] = times
        held = (metrics.get(v["id"]) or {}).get("held_out") or {}
        entries.append({
            "version": v["version"], "active": v["active"],
            "traffic_percent": v["traffic_percent"], "requests": len(rows),
            "latency_ms": {"mean": _round(sum(times) / len(times)) if times else None,
                           "p50": _round(stats.percentile(times, 50)) if times else None,
                           "p95": _round(stats.percentile(times, 95)) if times else None},
            "errors": sum(1 for r in rows if r["error"] is not None),
            "answered_rate": _round(sum(1 for r in rows if r["error"] is None) / len(rows))
            if rows else None,
            "execution_accuracy_held_out": held.get("execution_accuracy_guided"),
        })
    comparisons = []
    control = _control(entries)
    if control is not None:
        for entry in entries:
            candidate = entry["version"]
            if candidate == control or len(latencies[candidate]) < 2 \
                    or len(latencies[control]) < 2:
                continue
            speed = stats.bootstrap_ratio_of_means(latencies[control], latencies[candidate])
            comparisons.append({"candidate": candidate, "control": control,
                                "faster_by": _interval(speed),
                                "verdict": stats.verdict(candidate, control, speed, None)})
    return {"name": name, "kind": "text2sql", "since_s": since.total_seconds(),
            "versions": entries, "comparisons": comparisons}


def _round(value: float) -> float:
    return round(float(value), 4)


def _coverage(embedded: int, docs: int) -> float:
    """As the report shows it: with no docs there is nothing to miss (1.0)."""
    ratio = stats.coverage(embedded, docs)
    return 1.0 if ratio is None else _round(ratio)


def _interval(interval: stats.Interval | None) -> dict[str, float] | None:
    if interval is None:
        return None
    return {"estimate": _round(interval.estimate), "low": _round(interval.low),
            "high": _round(interval.high)}


def plot_latencies(conn: psycopg.Connection, name: str, since: dt.timedelta, path: str) -> int:
    """Draw each version's search latency distribution to a PNG; returns the requests drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = db.fetch_all(conn, "report_search_latencies", {"name": name, "since": since})
    by_version: dict[str, list[float]] = {}
    for row in rows:
        by_version.setdefault(row["version"], []).append(float(row["latency_ms"]))
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for version, latencies in by_version.items():
        axis.hist(latencies, bins=40, alpha=0.55,
                  label=f"{version} (n={len(latencies)}, p50 {stats.percentile(latencies, 50):.0f} ms, "
                        f"p95 {stats.percentile(latencies, 95):.0f} ms)")
    axis.set_xlabel("search latency (ms)")
    axis.set_ylabel("requests")
    axis.set_title(f"{name}: search latency by version")
    if by_version:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return len(rows)
