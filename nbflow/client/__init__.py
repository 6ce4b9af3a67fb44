"""Where Prefect code imports its run objects from (``prefect.client.schemas.objects``).

nbflow has no API client: runs are recorded in this process, and these
modules name the records and states Prefect code annotates hooks with.
"""
