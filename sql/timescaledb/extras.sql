-- What shardctl adds to the tutorial's tables (both TimescaleDB variants).

ALTER TABLE {ticks} ADD COLUMN IF NOT EXISTS bid DOUBLE PRECISION;

ALTER TABLE {ticks} ADD COLUMN IF NOT EXISTS ask DOUBLE PRECISION;

CREATE INDEX IF NOT EXISTS {ticks_symbol_time} ON {ticks} (symbol, "time" DESC);

CREATE TABLE IF NOT EXISTS {assets} (
    symbol TEXT UNIQUE,
    "name" TEXT
);
