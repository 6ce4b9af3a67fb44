"""What nbflow keeps on disk, under ``NBFLOW_HOME`` (``~/.nbflow`` by default), and the keys it computes.

``results/`` holds the result store (:mod:`nbflow.store.results`): pickled task
results, each under a string key, with a size limit and least-recently-used
eviction, shared by the cache and by retries of a flow run. A cache key is the
digest of labelled parts made by a cache policy (:mod:`nbflow.cache_policies`):
the fingerprints of a run's inputs (:mod:`nbflow.store.fingerprint`), of its
task's code (:mod:`nbflow.store.code`) and others; a retry's key is the run's
own id. ``history.sqlite`` is the run history. Everything here is written off
the hot path (a background thread or a finished run), and none of it is needed
for a run to succeed: what cannot be read is recomputed, what cannot be written
is kept in memory with a warning.
"""
