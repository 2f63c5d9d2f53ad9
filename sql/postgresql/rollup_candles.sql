-- Recompute the candles of {candle} whose bucket starts in [%(lo)s, %(hi)s)
-- from the finer candles in {source} (real-time tail of a coarse interval:
-- far fewer rows than the ticks). Equal to aggregating the ticks when
-- {source} is fresh over the range: open of the first finer bucket, close and
-- day_volume of the last, max of highs, min of lows.

DELETE FROM {candle} WHERE bucket >= %(lo)s AND bucket < %(hi)s;

INSERT INTO {candle} (bucket, symbol, "open", high, low, "close", day_volume)
SELECT
    date_bin({width}, bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS coarse,
    symbol,
    (array_agg("open" ORDER BY bucket))[1] AS "open",
    MAX(high) AS high,
    MIN(low) AS low,
    (array_agg("close" ORDER BY bucket DESC))[1] AS "close",
    (array_agg(day_volume ORDER BY bucket DESC))[1] AS day_volume
FROM {source}
WHERE bucket >= %(lo)s AND bucket < %(hi)s
GROUP BY 1, 2;
