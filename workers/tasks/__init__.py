"""The Celery tasks: thin, each calls the library to do its work.

One module per concern: ``embed`` (the batch-aware embedding task), ``train`` (one task per
job of :data:`pgfleet.training.specs.SPECS`), ``text2sql`` (``generate_sql``) and
``maintenance`` (what beat sends). Task names and queues are in :mod:`workers.queues`; a new
module is listed in the app's ``include`` (:mod:`workers.app`). Tasks may import the library
and the rest of :mod:`workers`; never :mod:`producers`, ``pgfleet.ops`` or ``pgfleet.cli``.
"""
