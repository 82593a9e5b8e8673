-- Each delivery names its operation's tenant, so that a node takes due
-- deliveries tenant by tenant and one tenant's backlog never holds up
-- another's. Deliveries stored before this know no tenant: they count as
-- the default one's.
ALTER TABLE longrun_deliveries ADD COLUMN tenant text NOT NULL DEFAULT '';
CREATE INDEX longrun_deliveries_tenant_due
    ON longrun_deliveries (tenant, due_us) WHERE due_us IS NOT NULL;
