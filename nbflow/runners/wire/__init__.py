"""The wire protocol between a driver and the workers of the process, Dask and Ray runners.

``payload`` is what crosses (a run's payload, a worker's record), ``worker``
executes payloads and sends live messages home, ``driver`` applies what
workers report to the driver's records, and ``results`` holds values left on
a cluster until they are read.
"""
