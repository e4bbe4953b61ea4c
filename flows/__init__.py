"""The flows. ``tasks`` is imported first: it sets polars' allocator up before polars loads."""

import tasks  # noqa: F401
