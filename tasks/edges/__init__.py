"""The edges: the one module that talks to Mistral, the one that talks to object storage, typed
settings and secrets, offline token counts, and the Prefect events automations react to. Pure
logic (``tasks.core``) never imports them; the task wrappers (``tasks``) pass what they need."""
