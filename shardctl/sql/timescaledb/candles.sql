-- The tutorial's daily candle continuous aggregate and its refresh policy,
-- verbatim apart from the configurable names. Runs only when the view is
-- missing, outside a transaction (WITH DATA materialises at once).

CREATE MATERIALIZED VIEW {day_candle}
WITH (timescaledb.continuous) AS
    SELECT
        time_bucket('1 day', time) AS bucket,
        symbol,
        FIRST(price, time) AS "open",
        MAX(price) AS high,
        MIN(price) AS low,
        LAST(price, time) AS "close",
        LAST(day_volume, time) AS day_volume
    FROM {ticks}
    GROUP BY bucket, symbol;

SELECT add_continuous_aggregate_policy({day_candle_regclass},
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 day',
    if_not_exists => TRUE);
