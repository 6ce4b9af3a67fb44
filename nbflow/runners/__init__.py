"""Where task runs execute. Users import runners from :mod:`nbflow.task_runners`.

- ``base``: :class:`TaskRunner`, submitting, mapping and scheduling on upstream runs;
- ``threads`` and ``worker_pool``: the thread runner and its never-deadlocking pool;
- ``processes``: the warm pool of worker processes;
- ``cluster``: what the Dask and Ray runners share; ``dask`` and ``ray``: those runners;
- ``wire``: the protocol between the driver and workers in other processes.
"""
