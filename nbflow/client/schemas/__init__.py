"""The run records and states under Prefect's ``prefect.client.schemas`` names."""

from nbflow.client.schemas.objects import FlowRun, State, StateType, TaskRun

__all__ = ["FlowRun", "State", "StateType", "TaskRun"]
