"""pgfleet's Celery workers. ``celery -A workers worker -Q embed.gpu`` runs one.

Celery only: the app, queue and task names, per-process resources (lifecycle), Flower's
events for batched work, and thin tasks that call the library. Importing it loads no model
and no torch. It may import the library (pgfleet's db, models, embedding, text2sql,
training, settings, ...) and :mod:`schema`; never :mod:`producers`, ``pgfleet.ops`` or
``pgfleet.cli``, which sit above it.
"""

from workers.app import app

__all__ = ["app"]
