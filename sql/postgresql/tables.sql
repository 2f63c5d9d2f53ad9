-- Plain PostgreSQL: ticks range-partitioned by day, a DEFAULT partition so no
-- tick is ever rejected. The candle tables are in candle_table.sql (one per
-- configured interval, same columns as the TimescaleDB views).

CREATE TABLE IF NOT EXISTS {ticks} (
    "time" TIMESTAMPTZ NOT NULL,
    symbol TEXT NOT NULL,
    price DOUBLE PRECISION,
    day_volume NUMERIC,
    bid DOUBLE PRECISION,
    ask DOUBLE PRECISION
) PARTITION BY RANGE ("time");

CREATE TABLE IF NOT EXISTS {ticks_default} PARTITION OF {ticks} DEFAULT;

CREATE INDEX IF NOT EXISTS {ticks_symbol_time} ON {ticks} (symbol, "time" DESC);

CREATE TABLE IF NOT EXISTS {assets} (
    symbol TEXT UNIQUE,
    "name" TEXT
);

-- Refresh progress per candle table (shardctl.candles.refresh_all_candles):
-- every bucket before "watermark" has been materialised by a policy-window
-- refresh; "last_run" is the time of that refresh (the schedule).
CREATE TABLE IF NOT EXISTS shardctl_candle_state (
    candle_table TEXT PRIMARY KEY,
    watermark TIMESTAMPTZ,
    last_run TIMESTAMPTZ,
    rows_last BIGINT
);
