-- A candle continuous aggregate and its refresh policy, one per configured
-- interval. For "1d" this is the tutorial's statement verbatim apart from the
-- configurable names ({width} = '1 day', {start} = '3 days', {end} = '1 day',
-- {schedule} = '1 day'); the finer intervals use the same query (see
-- shardctl.candles.CANDLE_POLICIES). Runs only when the view is missing,
-- outside a transaction (WITH DATA materialises at once). first()/last()
-- break ties on identical "time" by scan order (not deterministic).

CREATE MATERIALIZED VIEW {candle}
WITH (timescaledb.continuous) AS
    SELECT
        time_bucket({width}, time) AS bucket,
        symbol,
        FIRST(price, time) AS "open",
        MAX(price) AS high,
        MIN(price) AS low,
        LAST(price, time) AS "close",
        LAST(day_volume, time) AS day_volume
    FROM {ticks}
    GROUP BY bucket, symbol;

SELECT add_continuous_aggregate_policy({candle_regclass},
    start_offset => INTERVAL {start},
    end_offset => INTERVAL {end},
    schedule_interval => INTERVAL {schedule},
    if_not_exists => TRUE);
