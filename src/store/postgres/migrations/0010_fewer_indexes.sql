-- Every queued row was indexed twice for its claim: once by kind, tenant
-- and due time (the first layout), and again with its priority (0005),
-- which serves the same searches. Each index is written on every insert,
-- so the older one goes.
DROP INDEX IF EXISTS longrun_operations_queue;
