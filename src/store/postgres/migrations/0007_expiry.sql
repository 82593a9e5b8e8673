-- When a queued operation expires unless started (RunOptions.expire_time
-- or ttl), fixed at its create: the sweep finds the expired ones by this
-- index alone.
ALTER TABLE longrun_operations ADD COLUMN expire_us bigint;
CREATE INDEX longrun_operations_expiring
    ON longrun_operations (expire_us) WHERE state = 1 AND expire_us IS NOT NULL;
