"""``shardctl feed``: a local server that speaks the Twelve Data protocol (websocket and REST).

Simulated or replayed prices, the sent-log, fault switches. Used by the demo,
the tests and the benchmark. May import: ``config`` and the base modules.
"""
