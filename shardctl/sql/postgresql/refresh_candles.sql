-- Recompute the daily candles whose bucket starts in [%(lo)s, %(hi)s).
-- Buckets are whole UTC days (date_bin, independent of the session TimeZone),
-- like time_bucket('1 day', time). Ties on "time" are broken by value: open is
-- the lowest price among the first ticks, close the highest among the last;
-- day_volume is the largest among the last (it only grows during a day).

DELETE FROM {day_candle} WHERE bucket >= %(lo)s AND bucket < %(hi)s;

INSERT INTO {day_candle} (bucket, symbol, "open", high, low, "close", day_volume)
SELECT
    date_bin('1 day', "time", TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
    symbol,
    (array_agg(price ORDER BY "time", price NULLS LAST))[1] AS "open",
    MAX(price) AS high,
    MIN(price) AS low,
    (array_agg(price ORDER BY "time" DESC, price DESC NULLS LAST))[1] AS "close",
    (array_agg(day_volume ORDER BY "time" DESC, day_volume DESC NULLS LAST))[1] AS day_volume
FROM {ticks}
WHERE "time" >= %(lo)s AND "time" < %(hi)s
GROUP BY 1, 2;
