-- Who streams which shard when several hosts run the same config (a [cluster] section).
-- Fixed names (like shardctl_gaps); no placeholders, so no braces anywhere in this file.

-- One row per host (supervisor): its heartbeat moves at every renewal while it reaches the database.
-- A standby takes a shard over only after it has watched, while the database answers it,
-- the owner's heartbeat stand still for the lease TTL.
CREATE TABLE IF NOT EXISTS shardctl_hosts (
    host_id TEXT PRIMARY KEY,
    heartbeat BIGINT NOT NULL DEFAULT 0,
    renewed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    pid INTEGER NULL
);

-- One row per shard: its owner and fencing epoch. Every acquisition raises the epoch; a worker
-- commits only while the row still names its host and epoch (checked in the batch's transaction).
-- move_to: an operator's move in progress (the owner drains, then hands the lease over).
-- committed_*: who committed the shard's last batch (the ledger's journal offset is that host's)
-- and when that batch's last frame was received (a takeover's gap starts there).
CREATE TABLE IF NOT EXISTS shardctl_leases (
    shard TEXT PRIMARY KEY,
    owner TEXT NULL,
    epoch BIGINT NOT NULL DEFAULT 0,
    acquired_at TIMESTAMPTZ NULL,
    move_to TEXT NULL,
    committed_host TEXT NULL,
    committed_epoch BIGINT NULL,
    committed_received_at TIMESTAMPTZ NULL
);
