"""The objects hooks receive, under Prefect's names: ``from nbflow.client.schemas.objects import FlowRun``.

``FlowRun`` and ``TaskRun`` are nbflow's run records (:mod:`nbflow.records`),
``Flow`` the flow class; ``State``, ``StateType`` and ``StateDetails`` are nbflow's states.
"""

from nbflow.flows import Flow
from nbflow.records import FlowRun, TaskRun
from nbflow.states import State, StateDetails, StateType

__all__ = ["Flow", "FlowRun", "State", "StateDetails", "StateType", "TaskRun"]
