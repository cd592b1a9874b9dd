"""Embedding: the engines, batch planning (pure), the pipeline, the overlapped writer,
pool-process deaths, the inference cache, search, ``verify`` and ``load``.

It may import :mod:`pgfleet.models`, :mod:`pgfleet.db`, the shared modules (settings, state,
records, corpus, errors) and :mod:`schema`. It never imports :mod:`pgfleet.text2sql` (an
independent sibling), :mod:`pgfleet.training`, :mod:`workers`, :mod:`producers`,
``pgfleet.ops`` or ``pgfleet.cli``, nor Celery, Redis, click, rich or prometheus_client:
the Celery task (:mod:`workers.tasks.embed`) runs the pipeline. Model libraries are
imported inside the engines' loaders.
"""
