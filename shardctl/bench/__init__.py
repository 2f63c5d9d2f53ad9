"""``shardctl bench``: batch sizes on the real pipeline beside the tutorial's ingester.

Runs the feed and real worker processes, monitors them, and reports.
May import every lower floor.
"""
