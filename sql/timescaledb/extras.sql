-- What shardctl adds to the tutorial's tables (both TimescaleDB variants): bid, ask, an index, NOT NULL symbol.

ALTER TABLE {ticks} ADD COLUMN IF NOT EXISTS bid DOUBLE PRECISION;

ALTER TABLE {ticks} ADD COLUMN IF NOT EXISTS ask DOUBLE PRECISION;

CREATE INDEX IF NOT EXISTS {ticks_symbol_time} ON {ticks} (symbol, "time" DESC);

CREATE TABLE IF NOT EXISTS {assets} (
    symbol TEXT UNIQUE,
    "name" TEXT
);

-- The tutorial leaves symbol nullable; shardctl refuses a tick without a
-- symbol on both flavours (plain PostgreSQL declares it NOT NULL), so the
-- same bad row fails the same way everywhere. A no-op once in force.
ALTER TABLE {ticks} ALTER COLUMN symbol SET NOT NULL;
