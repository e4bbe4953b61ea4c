"""Pure logic: no Prefect, no network, no object storage. Everything here is unit-tested with
plain values; the edges (``tasks.edges``) and the task wrappers (``tasks``) build on it."""
