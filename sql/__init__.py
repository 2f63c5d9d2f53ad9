"""The schema, shipped inside the wheel as the package ``shardctl.sql``.

Read with ``psql -f`` from a clone; the code reads it with ``importlib.resources``.
"""
