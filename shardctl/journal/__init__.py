"""The shard's local files: the append-only journal of every frame received, and the dead letters.

Owns the bytes on disk under ``STATE_DIR/shards/NAME/``. Knows nothing of
the database or the wire. May import: ``errors``, ``logs``, ``private``, ``crashpoints``, ``config``.
"""
