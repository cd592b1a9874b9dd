"""``pgfleet cache stats`` and ``pgfleet cache prune``: the inference cache, by hand.

The same pruning runs on a schedule (``pgfleet beat``); see :mod:`pgfleet.embedding.cache`.
"""

from __future__ import annotations

import json

import click
from rich.table import Table

from pgfleet.cli.output import out


def _policy():
    from pgfleet.cli import context
    from pgfleet.embedding.cache import CachePolicy

    conf = context.settings()
    return conf, CachePolicy.from_settings(conf)


@click.group("cache")
def cache() -> None:
    """The inference cache: statistics and pruning."""


@cache.command("stats")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def cache_stats(as_json: bool) -> None:
    """Entries, hits, hit ratio over the last hour, size on disk, and what the next prune
    would remove, per model version."""
    from pgfleet.cli import context
    from pgfleet.embedding import cache as cache_mod

    conf, policy = _policy()
    with context.connection(conf, autocommit=True) as conn:
        data = cache_mod.stats(conn, policy)
    if as_json:
        click.echo(json.dumps(data))
        return
    table = Table(title="inference cache")
    table.add_column("version", no_wrap=True)
    for col in ("entries", "hits", "prunable", "oldest entry", "hit ratio (1 h)"):
        table.add_column(col, justify="right")
    for v in data["versions"]:
        table.add_row(f"{v['name']}@{v['version']}", str(v["entries"]), str(v["hits"]),
                      str(v["prunable"]), _age(v["oldest_entry_s"]),
                      _ratio(v["hit_ratio"], v["window_lookups"]))
    out.print(table)
    p = data["policy"]
    bound = f"at most {p['max_entries']:,} entries" if p["max_entries"] else "no size bound"
    out.print(f"{data['entries']:,} entries, {data['hits']:,} hits, hit ratio (last hour) "
              f"{_ratio(data['hit_ratio'], data['window_lookups'])}, "
              f"{_size(data['size_bytes'])} on disk", highlight=False, soft_wrap=True)
    out.print(f"pruning: entries unused for {_age(p['max_age_s'])} with fewer than "
              f"{p['min_hits']} hits, then {bound}", highlight=False, soft_wrap=True)


@cache.command("prune")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def cache_prune(as_json: bool) -> None:
    """Prune now, as the schedule does: entries unused for PGFLEET_CACHE_MAX_AGE_S with
    fewer than PGFLEET_CACHE_MIN_HITS hits, then the least useful down to
    PGFLEET_CACHE_MAX_ENTRIES."""
    from pgfleet.cli import context
    from pgfleet.embedding import cache as cache_mod

    conf, policy = _policy()
    with context.connection(conf, autocommit=True) as conn:
        report = cache_mod.prune(conn, policy)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    out.print(f"pruned {report.unused:,} unused entries, evicted {report.evicted:,} over "
              f"the bound; {report.entries:,} entries left", highlight=False)


def _ratio(ratio: float | None, lookups: int) -> str:
    return "-" if ratio is None else f"{ratio:.1%} of {lookups:,}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _size(size_bytes: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= size:
            return f"{size_bytes / size:.1f} {unit}"
    return f"{size_bytes} B"
