"""pgfleet's Celery workers. ``celery -A workers worker -Q embed.gpu`` runs one.

Celery only: the app, queue and task names, per-process resources (lifecycle), Flower's
events for batched work, and thin tasks that call the library. Importing it loads no model
and no torch. It may import the library (pgfleet's db, models, embedding, text2sql,
training, settings, ...) and :mod:`schema`; never :mod:`producers`, ``pgfleet.ops`` or
``pgfleet.cli``, which sit above it.
"""

import os

# torch's and ONNX Runtime's OpenMP threads sleep when they have no work instead of
# spinning: on a machine the worker shares (the API, PostgreSQL, another worker), a spinning
# thread burns the cores the others need. Measured on 2 cores with the API answering
# searches during a backlog: the torch worker needed 28 CPU-s for 600 docs instead of 15,
# and kept 0.36 of its throughput, against 0.55 with the threads sleeping. Set before torch
# is imported (the pool's children load it lazily); a value already set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from workers.app import app  # noqa: E402 - after the variable the runtimes read

__all__ = ["app"]
