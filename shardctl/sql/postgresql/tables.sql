-- Plain PostgreSQL: ticks range-partitioned by day, a DEFAULT partition so no
-- tick is ever rejected, and the daily candles as a table kept fresh by
-- shardctl.schema.refresh_candles (same columns as the TimescaleDB view).

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

CREATE TABLE IF NOT EXISTS {day_candle} (
    bucket TIMESTAMPTZ NOT NULL,
    symbol TEXT NOT NULL,
    "open" DOUBLE PRECISION,
    high DOUBLE PRECISION,
    low DOUBLE PRECISION,
    "close" DOUBLE PRECISION,
    day_volume NUMERIC,
    PRIMARY KEY (symbol, bucket)
);
