"""``generate_sql``: SQL for a question, on the CPU queue.

It runs on ``embed.cpu``: answering is short CPU inference with a small model, as the INT8
embedding work there is, and it must never wait behind the training queue's hour-long jobs
(one at a time per worker) nor compete with the GPU queue's batches. The model is loaded in
the worker process on first use and kept (two versions at most).
"""

from __future__ import annotations

from typing import Any

from pgfleet import db
from pgfleet.settings import resolve_urls
from workers import lifecycle
from workers.app import app
from workers.queues import QUEUE_CPU, TASK_GENERATE_SQL


@app.task(name=TASK_GENERATE_SQL, queue=QUEUE_CPU, acks_late=False, ignore_result=False)
def generate_sql(question: str, version: str | int | None = None,
                 beams: int = 4, key: str | None = None) -> dict[str, Any]:
    """``{"sql": ..., "beam": ..., "why": ..., "rejected": [...], ...}``; ``sql`` is None
    when no beam passed the guard. Without ``version`` the A/B split of the active text2sql
    model chooses one, the same for every request with the same ``key``."""
    from pgfleet.text2sql.generate import generate_sql as generate
    from pgfleet.text2sql.readonly import connect_reader

    urls = resolve_urls(lifecycle.settings())
    # the fleet's connection routes and logs; the values and the beams go through a session
    # of the reader login, once per request
    with db.connect(urls.database_url, autocommit=True) as conn, \
            connect_reader(urls.reader_url) as reader:
        return generate(conn, question, reader=reader, version=version, beams=beams,
                        key=key).as_dict()
