-- Orders as sorted runs (see store/runs.rs): a row per chunk of a few
-- hundred orders instead of a row and two index entries per order.
-- longrun_orders keeps what was stored before, read beside the runs and
-- never written again.

-- The live runs of each family: a month's orders (the month's key,
-- 'YYYYMM') or the order_id locations ('ids').
CREATE TABLE longrun_order_runs (
    tenant   text NOT NULL,
    family   text NOT NULL,
    run      bigint NOT NULL,
    entries  bigint NOT NULL,
    least    bytea NOT NULL,
    greatest bytea NOT NULL,
    PRIMARY KEY (tenant, family, run)
);

-- A run's chunks, found by their last key: the chunk holding a key is
-- the first whose last key is at or after it.
CREATE TABLE longrun_order_chunks (
    tenant  text NOT NULL,
    family  text NOT NULL,
    run     bigint NOT NULL,
    last    bytea NOT NULL,
    entries bytea NOT NULL,
    PRIMARY KEY (tenant, family, run, last)
) WITH (toast_tuple_target = 8160);
-- A chunk, packed already (about 6 KiB), stays in its row; one that
-- would not fit a page goes out of line as it is, never compressed again.
ALTER TABLE longrun_order_chunks ALTER COLUMN entries SET STORAGE EXTERNAL;

-- Each month's count of orders, counted once from what was stored before.
CREATE TABLE longrun_order_months (
    tenant text NOT NULL,
    month  integer NOT NULL,                     -- year * 100 + month
    stored bigint NOT NULL,
    PRIMARY KEY (tenant, month)
);
INSERT INTO longrun_order_months (tenant, month, stored)
SELECT tenant, month, count(*) FROM longrun_orders GROUP BY tenant, month;

-- Run numbers, of every tenant. A run's number is also the sequence
-- number of the entries it writes: a writer takes its number holding its
-- tenant's row, so each write of a tenant numbers above the last.
CREATE SEQUENCE longrun_order_run_numbers;
