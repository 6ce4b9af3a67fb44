"""Reading runs: the records of recent flow runs and task runs, and their events.

>>> import nbflow.runs
>>> run = nbflow.runs.last_flow_run()
>>> run.state, run.state_counts(), [r.upstream for r in run.task_runs]

``subscribe(fn, kinds=...)`` calls ``fn(event)`` for every event of the given
kinds (state transitions, printed output, log records); see
:mod:`nbflow.events` for the kinds and :mod:`nbflow.records` for the records.
"""

from nbflow.events import OutputEvent, RunEvent, StateEvent, Subscription, subscribe
from nbflow.records import FlowRun, TaskRun, find_flow_run, flow_runs, iter_task_runs, last_flow_run

__all__ = [
    "FlowRun",
    "TaskRun",
    "flow_runs",
    "last_flow_run",
    "find_flow_run",
    "iter_task_runs",
    "subscribe",
    "Subscription",
    "RunEvent",
    "StateEvent",
    "OutputEvent",
]
