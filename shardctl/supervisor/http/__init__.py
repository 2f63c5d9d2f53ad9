"""The supervisor's HTTP side on 127.0.0.1: ``/metrics``, ``/healthz``, and the live status page.

May import: ``supervisor.states`` and ``supervisor.shard`` (what it shows), ``db``, ``config``, base modules.
"""
