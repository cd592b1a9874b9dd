"""Model versions and their A/B tests: looking a version up and registering one, the split
and routing by it, inference logs, and the statistics the A/B report is made of.

Below the embedding and text-to-SQL code that routes by it: it may import only
:mod:`pgfleet.db`, the shared modules (settings, state, records, corpus, errors) and
:mod:`schema`. It never imports :mod:`pgfleet.embedding` or its engines
(:mod:`pgfleet.models.spec` is what an engine needs to know of a version),
:mod:`pgfleet.text2sql`, :mod:`pgfleet.training`, nor anything above the library.
"""
