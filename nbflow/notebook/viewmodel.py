"""The notebook layer's subscriber on the event seam: it keeps the run models (:mod:`nbflow.report.model`) of recent runs.

The :class:`Tracker` subscribes to flow-run and cluster events only, which
the session needs in the thread that runs the flow; the models read task
runs from the records on the view's clock. Nothing here imports IPython or ipywidgets.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

from nbflow import events
from nbflow.records import FlowRun
from nbflow.report.model import RunModel
from nbflow.states import State

logger = logging.getLogger("nbflow.notebook")


class Tracker:
    """The notebook layer's subscriber on the event seam: flow-run events only.

    Transitions of top-level flow runs are handed to
    ``on_flow_state(flow_run, state)`` in the thread running the flow (the
    session shows views and routes output from there). Task runs are read
    from the records by the models, so they cost the runs nothing.
    """

    def __init__(
        self,
        on_flow_state: Callable[[FlowRun, State], Any] | None = None,
        keep: int = 32,
        on_cluster: Callable[[FlowRun, events.ClusterEvent], Any] | None = None,
    ) -> None:
        self.on_flow_state = on_flow_state
        self.on_cluster = on_cluster
        self._models: collections.OrderedDict[FlowRun, RunModel] = collections.OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self._subscription: events.Subscription | None = None

    def start(self) -> None:
        """Subscribe to nbflow's flow-run and cluster events."""
        if self._subscription is None:
            self._subscription = events.subscribe(self, ("flow-state", "cluster"))

    def stop(self) -> None:
        """Unsubscribe."""
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None

    def model(self, flow_run: FlowRun) -> RunModel | None:
        """The model of ``flow_run``'s top-level run, if one is kept."""
        return self._models.get(flow_run.root)

    def track(self, flow_run: FlowRun) -> RunModel:
        """The model of ``flow_run``'s top-level run (made from its records if new); recent ones are kept."""
        root = flow_run.root
        with self._lock:
            model = self._models.get(root)
            if model is None:
                model = self._models[root] = RunModel.of(root)
                while len(self._models) > self._keep:
                    oldest = next(iter(self._models))
                    if not oldest.state.is_final():
                        break
                    del self._models[oldest]
            return model

    def __call__(self, event: events.StateEvent | events.ClusterEvent) -> None:
        try:
            if event.kind == "cluster":
                self._cluster(event)  # type: ignore[arg-type]
                return
            run, state = event.run, event.state  # type: ignore[union-attr]
            if run.parent is None and self.on_flow_state is not None:
                self.on_flow_state(run, state)
        except Exception:  # never let the view break a flow run
            logger.exception("nbflow notebook view: handling %r failed", event)

    def _cluster(self, event: events.ClusterEvent) -> None:
        # A cluster starts before its flow run enters Running: the view may begin here.
        if event.flow_run is None:
            return
        root = event.flow_run.root
        if self.on_cluster is not None:
            self.on_cluster(root, event)
        model = self.model(root)
        if model is not None:
            model.note_cluster(event)


__all__ = ["Tracker"]
