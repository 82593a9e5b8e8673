-- Schedules: one row each, its record encoded as on sled. `revision`
-- counts its writes (a write names the revision it read); `wake_us` is
-- when a scheduler may next take it (due time or the end of a node's
-- hold), NULL while it is not due at all, and indexed for the take.
CREATE TABLE longrun_schedules (
    tenant   text NOT NULL,
    id       text NOT NULL,
    revision bigint NOT NULL,
    wake_us  bigint,
    record   bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX longrun_schedules_wake
    ON longrun_schedules (wake_us) WHERE wake_us IS NOT NULL;
