"""The analysts' library: what ``enrich run`` published, read from a plain Python session.

    import enrich

    enrich.similar("s3://analytics/enriched/comments_embeddings", text="parcel arrived late",
                   k=5, where="team = 'billing'", columns=["text"])
    enrich.read({"embeddings": ".../comments_embeddings", "moderation": ".../comments_moderation"})
    print(enrich.describe(".../comments_moderation"))

No Prefect server, task or flow is involved: tables are read through the storage layer
(``tasks.edges.storage``: local paths, or ``s3://`` with the ``AWS_*`` variables or a named
``AwsCredentials`` block), and the one Mistral call (a query text's vector) goes through the
project's gateway. The ``enrich similar`` and ``enrich describe`` commands print the same.
"""

# ``tasks`` first: it sets polars' allocator up before polars loads (see ``tasks/__init__``).
import tasks  # noqa: F401
from enrich.description import ColumnInfo, PartitionInfo, TableDescription, describe
from enrich.search import (
    BadQueryError,
    ModelVersionWarning,
    NotEmbeddingsError,
    UnknownIdError,
    similar,
)
from enrich.tables import (
    AnalystError,
    TableMetadataError,
    TableNotFoundError,
    UnknownPartitionError,
)
from enrich.view import read

__all__ = [
    "AnalystError",
    "BadQueryError",
    "ColumnInfo",
    "ModelVersionWarning",
    "NotEmbeddingsError",
    "PartitionInfo",
    "TableDescription",
    "TableMetadataError",
    "TableNotFoundError",
    "UnknownIdError",
    "UnknownPartitionError",
    "describe",
    "read",
    "similar",
]
