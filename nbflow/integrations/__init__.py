"""Task runners on cluster engines, each imported only when used.

``nbflow.integrations.dask.DaskTaskRunner`` and ``nbflow.integrations.ray.RayTaskRunner``
(also importable from ``nbflow.task_runners``) need the ``dask`` and ``ray``
extras: ``pip install "nbflow[dask]"`` / ``pip install "nbflow[ray]"``.
"""
