-- Gaps in a shard's tick stream and the REST bars that fill them, the same in both flavours.
-- Idempotent: every statement is IF NOT EXISTS. Applied by shardctl.gaps.ensure_gap_tables.
-- Fixed names (like shardctl_schema); no placeholders, so no braces anywhere in this file.

-- One row per stretch of time in which a shard may have missed ticks.
-- reason: 'disconnected: ...', 'worker down', 'journal cap: dropped N frames', ...
-- backfill_status: NULL (not considered), 'pending', 'done', 'failed: ...',
-- 'skipped: shorter than threshold'.
CREATE TABLE IF NOT EXISTS shardctl_gaps (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shard TEXT NOT NULL,
    gap_from TIMESTAMPTZ NOT NULL,
    gap_to TIMESTAMPTZ NOT NULL,
    reason TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    backfill_status TEXT NULL,
    backfilled_bars INTEGER NULL,
    CONSTRAINT shardctl_gaps_positive CHECK (gap_to > gap_from),
    CONSTRAINT shardctl_gaps_once UNIQUE (shard, gap_from, gap_to)
);

CREATE INDEX IF NOT EXISTS shardctl_gaps_shard_from_idx ON shardctl_gaps (shard, gap_from DESC);

-- REST-sourced bars (one-minute OHLC) that stand in for ticks missed during a gap.
CREATE TABLE IF NOT EXISTS shardctl_bars (
    symbol TEXT NOT NULL,
    bucket TIMESTAMPTZ NOT NULL,
    "interval" TEXT NOT NULL DEFAULT '1min',
    "open" DOUBLE PRECISION,
    high DOUBLE PRECISION,
    low DOUBLE PRECISION,
    "close" DOUBLE PRECISION,
    volume NUMERIC NULL,
    source TEXT NOT NULL DEFAULT 'rest',
    fetched_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, "interval", bucket)
);
