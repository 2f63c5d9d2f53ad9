-- Recompute the candles of {candle} whose bucket starts in [%(lo)s, %(hi)s)
-- from the ticks; lo and hi are bucket boundaries. Buckets are whole UTC
-- minutes/hours/days (date_bin from 2000-01-01 UTC, independent of the
-- session TimeZone), like time_bucket({width}, time). Ties on "time" are
-- broken by value: open is the lowest price among the first ticks, close the
-- highest among the last; day_volume is the largest among the last (it only
-- grows during a day). TimescaleDB's first()/last() keep whichever tied row
-- the scan meets first instead (not deterministic).

DELETE FROM {candle} WHERE bucket >= %(lo)s AND bucket < %(hi)s;

INSERT INTO {candle} (bucket, symbol, "open", high, low, "close", day_volume)
SELECT
    date_bin({width}, "time", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
    symbol,
    (array_agg(price ORDER BY "time", price NULLS LAST))[1] AS "open",
    MAX(price) AS high,
    MIN(price) AS low,
    (array_agg(price ORDER BY "time" DESC, price DESC NULLS LAST))[1] AS "close",
    (array_agg(day_volume ORDER BY "time" DESC, day_volume DESC NULLS LAST))[1] AS day_volume
FROM {ticks}
WHERE "time" >= %(lo)s AND "time" < %(hi)s
GROUP BY 1, 2;
