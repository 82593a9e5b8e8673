-- Batches: a child names its parent (fixed at the insert), indexed so
-- that a batch's children are read without scanning the rest; and the
-- batches not done yet, which a cascade looks through.
ALTER TABLE longrun_operations ADD COLUMN parent uuid;
CREATE INDEX longrun_operations_parent
    ON longrun_operations (parent, id) WHERE parent IS NOT NULL;
CREATE INDEX longrun_operations_open_batches
    ON longrun_operations (id) WHERE kind = 'longrun.v1.Batch' AND ended_us IS NULL;
