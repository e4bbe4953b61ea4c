"""The flows. ``tasks`` is imported first: it sets polars' allocator up before polars loads.

The temporary Prefect server that ``enrich run`` and ``make demo`` start (when no
``PREFECT_API_URL`` is set) sends no usage telemetry unless the user opts in with
``PREFECT_SERVER_ANALYTICS_ENABLED=true``: on an offline machine every run would otherwise log
"Failed to send telemetry", and no traffic should leave the machine unasked. Set before Prefect
reads its settings.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import tasks  # noqa: F401
