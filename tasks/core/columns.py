"""Internal column names shared by the steps (never published)."""

TEXT_KEY = "_text_key"  # 64-bit hash of (options, normalised text): buckets and joins in a run
TEXT_KEY_2 = "_text_key_2"  # a second, independent hash: with the first, the cache's key
REJECT = "_reject_reason"
BUCKET = "_bucket"
KEY_SCHEME = 1  # bump when the key recipe changes: every cached entry then misses, none is wrong
# The content cache's columns (its files outlive runs: these names are part of its format).
CACHE_KEY = "text_key"
CACHE_KEY_2 = "text_key_2"
CACHE_TOKENS = "tokens"
# Published beside ``model`` (the name asked for): the version the service says answered.
MODEL_VERSION = "model_version"
