"""shardctl: stream Twelve Data prices into PostgreSQL/TimescaleDB, one worker process per shard."""

__version__ = "0.1.0"
