-- TimescaleDB >= 2.23: the tutorial's statement, verbatim (it creates the
-- columnstore policy by itself), then the columns and index shardctl adds.

CREATE TABLE IF NOT EXISTS {ticks} (
    "time" TIMESTAMPTZ,
    symbol TEXT,
    price DOUBLE PRECISION,
    day_volume NUMERIC
) WITH (
   tsdb.hypertable,
   tsdb.segmentby='symbol',
   tsdb.orderby='time DESC'
);
