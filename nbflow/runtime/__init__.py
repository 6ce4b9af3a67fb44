"""Facts about the run executing here: ``from nbflow.runtime import flow_run, task_run, deployment``.

>>> from nbflow.runtime import task_run
>>> task_run.name, task_run.run_count, task_run.parameters

Outside a run the attributes are ``None``, ``{}`` or ``0``.
"""

from nbflow.runtime import deployment, flow_run, task_run

__all__ = ["deployment", "flow_run", "task_run"]
