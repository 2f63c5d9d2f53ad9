"""The wire: the Twelve Data websocket client, its frame reader, and frames → tick rows.

Owns everything that knows the Twelve Data protocol on the streaming side.
May import: ``errors``, ``logs``, ``backoff``, ``rows``, ``config``.
"""
