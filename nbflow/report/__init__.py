"""A flow run drawn without a notebook: its model, DAG, state grids and HTML pictures, and the offline report.

``FlowRun.export(path)`` (and ``%nbflow export``) writes the report
(:mod:`nbflow.report.export`); the notebook layer's live view draws with the
same modules. Nothing here imports IPython or ipywidgets, and the core
imports this package only when a report is asked for.
"""
