"""The emulator's routes, one router per area of the API:

* ``files``: ``/v1/files`` — upload, list, retrieve, signed URL, download, delete;
* ``jobs``: ``/v1/batch/jobs`` — create, list, get, cancel, delete;
* ``inference``: the direct model endpoints (``/v1/embeddings``, ``/v1/chat/completions``...);
* ``inspection``: ``/emulator/*`` — health, and every job and file as the emulator holds them.

Each route reaches the emulator's state through the ``Backend`` that ``create_app`` builds.
"""
