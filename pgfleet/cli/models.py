"""``pgfleet models``: the model versions, with their status, traffic and measured metrics."""

from __future__ import annotations

import json

import click
from rich.table import Table

from pgfleet.cli.output import out


@click.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """Model versions: name, version, format, status, traffic and measured metrics."""
    from pgfleet import db
    from pgfleet.cli import context

    with context.connection() as conn:
        # id, name, version, kind, format, status, active, traffic_percent, dimensions,
        # artifact, metrics, parent, created_at: the JSON output's keys, in its order
        items = db.fetch_all(conn, "model_versions_listing")
    if as_json:
        for item in items:
            item["created_at"] = item["created_at"].isoformat()
        click.echo(json.dumps(items))
        return
    table = Table(title="model versions")
    for col in ("id", "version", "format", "status", "active", "traffic", "size", "docs/s (best)",
                "cosine to parent", "top-10 overlap"):
        table.add_column(col)
    for item in items:
        m = item["metrics"] or {}
        size = m.get("file_bytes", {}).get("onnx_int8")
        speed = m.get("docs_per_s", {}).get("onnx_int8", {}).get("best_docs_per_s")
        fid = m.get("fidelity_int8", {})
        table.add_row(str(item["id"]), f"{item['name']}@{item['version']}", item["format"],
                      item["status"], "yes" if item["active"] else "no",
                      f"{item['traffic_percent']}%", f"{size / 1e6:.1f} MB" if size else "-",
                      str(speed or "-"), str(fid.get("cosine_mean", "-")),
                      str(fid.get("top10_overlap", "-")))
    out.print(table)
