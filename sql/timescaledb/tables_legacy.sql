-- TimescaleDB < 2.23: CREATE TABLE, then create_hypertable and the
-- compression (columnstore) settings and policy that 2.23 sets up by itself.

CREATE TABLE IF NOT EXISTS {ticks} (
    "time" TIMESTAMPTZ,
    symbol TEXT,
    price DOUBLE PRECISION,
    day_volume NUMERIC
);

SELECT create_hypertable({ticks_regclass}, 'time', if_not_exists => TRUE);

ALTER TABLE {ticks} SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'symbol',
    timescaledb.compress_orderby = 'time DESC'
);

SELECT add_compression_policy({ticks_regclass}, INTERVAL '7 days', if_not_exists => TRUE);
