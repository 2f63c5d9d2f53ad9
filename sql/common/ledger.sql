-- shardctl bookkeeping, the same in both flavours.
-- Placeholders are psycopg2.sql identifiers filled in by shardctl.schema.

-- One row per tick table: which flavour and schema version shardctl applied.
CREATE TABLE IF NOT EXISTS shardctl_schema (
    ticks_table TEXT PRIMARY KEY,
    flavour TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per shard: the last batch committed with its rows (the idempotency key).
CREATE TABLE IF NOT EXISTS {ledger} (
    shard TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    journal_offset BIGINT NULL,
    rows_total BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- The receive time of the last frame of the last committed batch: where the next start's "worker down" gap
-- begins, and where a stretch lost to a database that went back in time (failover, restore) begins.
ALTER TABLE {ledger} ADD COLUMN IF NOT EXISTS received_at TIMESTAMPTZ NULL;
