"""One shard's worker process: stream → journal → parse → batch → commit, and its stop contract.

``python -m shardctl.worker --config FILE --shard NAME`` runs one. May import
every lower floor: ``twelvedata``, ``journal``, ``db``, ``config`` and the base modules.
"""
