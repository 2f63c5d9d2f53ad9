-- One candle table (plain PostgreSQL), applied for each configured interval:
-- the columns of the TimescaleDB view, a key that serves the seed query
-- (symbol = ... AND bucket >= ...), and a bucket index so a refresh finds the
-- buckets of its window without reading the whole table.

CREATE TABLE IF NOT EXISTS {candle} (
    bucket TIMESTAMPTZ NOT NULL,
    symbol TEXT NOT NULL,
    "open" DOUBLE PRECISION,
    high DOUBLE PRECISION,
    low DOUBLE PRECISION,
    "close" DOUBLE PRECISION,
    day_volume NUMERIC,
    PRIMARY KEY (symbol, bucket)
);

CREATE INDEX IF NOT EXISTS {candle_bucket_idx} ON {candle} (bucket);
