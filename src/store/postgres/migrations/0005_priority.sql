-- An operation's priority, fixed at its create: among the queued
-- operations of a kind, a claim takes the higher priorities first, and
-- within one the oldest first, tenants taking turns.
ALTER TABLE longrun_operations ADD COLUMN priority integer NOT NULL DEFAULT 0;
CREATE INDEX longrun_operations_ready_by_priority
    ON longrun_operations (kind, tenant, priority DESC, due_us, id) WHERE state = 1;
