-- Flow control. An operation's concurrency key, fixed at its create.
ALTER TABLE longrun_operations ADD COLUMN concurrency_key text;

-- The limits of each kind, one row per scope (0 the whole kind, 1 each
-- concurrency key, 2 each tenant). `rates` holds stacked token buckets
-- as `COUNT/UNIT[:burst=N]` joined by `;`.
CREATE TABLE longrun_limits (
    kind text NOT NULL,
    scope smallint NOT NULL,
    concurrency integer,
    rates text NOT NULL DEFAULT '',
    PRIMARY KEY (kind, scope)
);

-- How many operations run holding each slot: claims add to it in their
-- own transaction, and the write that ends an attempt takes it back, so
-- no claim counts rows. The kind's own row (scope 0, key '') is locked by
-- every claim of a limited kind, which serialises them across nodes.
CREATE TABLE longrun_slots (
    kind text NOT NULL,
    scope smallint NOT NULL,
    key text NOT NULL,
    running integer NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, scope, key)
);

-- Token buckets, one per slot and stacked rate (its index in the limit):
-- the tokens left at `at_us`.
CREATE TABLE longrun_buckets (
    kind text NOT NULL,
    scope smallint NOT NULL,
    key text NOT NULL,
    rate smallint NOT NULL,
    tokens double precision NOT NULL,
    at_us bigint NOT NULL,
    PRIMARY KEY (kind, scope, key, rate)
);
