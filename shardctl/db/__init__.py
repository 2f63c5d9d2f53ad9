"""The database: connections, the embedded server, the schema, the COPY writer, gaps, candles.

Owns every SQL statement shardctl sends. ``cli`` and ``readouts`` hold the
commands that act on it; nothing else here imports argparse. May import:
``errors``, ``logs``, ``private``, ``backoff``, ``crashpoints``, ``rows``, ``config``, ``journal``.
"""
