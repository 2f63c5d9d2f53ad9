-- When shardctl meant to collect each symbol: one row per (shard, symbol) stretch, the same in both flavours.
-- Written by the supervisor at lifecycle points (a shard started, stopped on purpose, symbols added or removed
-- by a reload), never per tick. An open stretch has stopped_at NULL. `shardctl audit` calls the minutes
-- outside every stretch "off". Idempotent; fixed names, no placeholders.
CREATE TABLE IF NOT EXISTS shardctl_collection (
    shard TEXT NOT NULL,
    symbol TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    stopped_at TIMESTAMPTZ NULL,
    stop_reason TEXT NULL,
    PRIMARY KEY (symbol, started_at, shard)
);

CREATE UNIQUE INDEX IF NOT EXISTS shardctl_collection_open_idx ON shardctl_collection (shard, symbol)
    WHERE stopped_at IS NULL;
