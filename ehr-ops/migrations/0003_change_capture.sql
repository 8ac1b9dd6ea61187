-- Change capture: logical replication of the append-only version table into
-- the lakehouse.
--
-- The publication names only resource_versions: every committed write of the
-- store appends exactly one row there, so its inserts are the complete change
-- log. The replication slot is created by the capture worker together with
-- an exported snapshot, which it copies before streaming.
CREATE PUBLICATION infoctor_capture FOR TABLE resource_versions;

-- Progress of the capture worker per replication slot. `snapshot_lsn` is the
-- slot's consistent point; `snapshot_completed_at` is set only after every
-- tenant's copy of that snapshot is committed to the lakehouse, so a worker
-- that finds a slot without a completed snapshot starts over. Only the
-- administrator role reads or writes this table; the application role has no
-- grant on it.
CREATE TABLE capture_state (
    slot_name              text PRIMARY KEY,
    snapshot_lsn           pg_lsn NOT NULL,
    snapshot_started_at    timestamptz NOT NULL DEFAULT now(),
    snapshot_completed_at  timestamptz
);
