-- longrun's tables on PostgreSQL. Times are microseconds since the Unix
-- epoch, as the records keep them. Each record is the store's private
-- protobuf encoding; the columns beside it exist to be searched.

CREATE TABLE longrun_operations (
    id               uuid PRIMARY KEY,       -- UUIDv7: byte order is age
    tenant           text NOT NULL,
    kind             text NOT NULL,
    state            smallint NOT NULL,      -- 1 queued, 2 running, ... 6
    request_id       uuid,
    due_us           bigint NOT NULL,        -- while queued: claimable from
    ended_us         bigint,                 -- once done
    lease_holder     text,                   -- while running under a lease
    lease_expires_us bigint,
    attempt          integer NOT NULL,       -- the claims' fencing token
    version          bigint NOT NULL,
    record           bytea NOT NULL
);
CREATE UNIQUE INDEX longrun_operations_request_id
    ON longrun_operations (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX longrun_operations_queue
    ON longrun_operations (kind, tenant, due_us, id) WHERE state = 1;
CREATE INDEX longrun_operations_tenant ON longrun_operations (tenant, id);
CREATE INDEX longrun_operations_unfinished
    ON longrun_operations (id) WHERE ended_us IS NULL;
CREATE INDEX longrun_operations_ended
    ON longrun_operations (ended_us) WHERE ended_us IS NOT NULL;
CREATE INDEX longrun_operations_leases
    ON longrun_operations (lease_expires_us) WHERE lease_expires_us IS NOT NULL;

-- The webhook outbox. due_us is set while a delivery is pending; a node
-- that takes one moves it forward by a lease, so no other node sends it
-- meanwhile.
CREATE TABLE longrun_deliveries (
    id        uuid PRIMARY KEY,
    operation uuid NOT NULL,
    due_us    bigint,
    record    bytea NOT NULL
);
CREATE INDEX longrun_deliveries_due ON longrun_deliveries (due_us) WHERE due_us IS NOT NULL;
CREATE INDEX longrun_deliveries_operation ON longrun_deliveries (operation);

CREATE TABLE longrun_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

-- Orders of the report service, one month a contiguous range of an index.
CREATE TABLE longrun_orders (
    tenant     text NOT NULL,
    order_id   text COLLATE "C" NOT NULL,
    month      integer NOT NULL,                 -- year * 100 + month
    created_at bigint NOT NULL,
    record     bytea NOT NULL,
    PRIMARY KEY (tenant, order_id)
);
CREATE INDEX longrun_orders_month ON longrun_orders (tenant, month, created_at, order_id);
CREATE TABLE longrun_order_tenants (
    tenant text PRIMARY KEY,
    stored bigint NOT NULL
);

-- Sweeps that one node at a time runs (retention), held under a lease.
CREATE TABLE longrun_sweeps (
    name     text PRIMARY KEY,
    holder   text NOT NULL,
    until_us bigint NOT NULL
);
