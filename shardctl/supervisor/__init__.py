"""The supervisor: one asyncio loop that runs a worker process per shard, the control socket, HTTP.

Owns the shard state machine, restarts with backoff, graceful stop, and the
operator's commands (``cli``). Starts workers by exec, never imports the
worker's code. May import: ``db``, ``feed``, ``config``, ``journal`` and the base modules.
"""
