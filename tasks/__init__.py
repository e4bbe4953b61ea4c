"""The pipeline's steps and edges.

Importing this package first tells polars' memory allocator (jemalloc) to hand freed memory back to
the system within half a second, from a background thread: by default it keeps freed pages for
seconds, so a process that parses and joins shard after shard holds hundreds of MB it no longer
uses (measured: 20,000 parsed embedding rows leave 570 MB resident by default, 360 MB with this).
jemalloc reads the setting once, when polars is first loaded, so it must be set before any
``import polars``; a value already in the environment wins.
"""

import os

os.environ.setdefault(
    "_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0"
)

# Expected errors (bad input, a budget, a failed gate) are logged by Prefect's engine without
# their traceback, in every process that runs a step (Dask workers included).
from tasks.logs import quiet_expected_errors

quiet_expected_errors()
