-- A filter over the keys of each location run (`runs::filter`), written
-- with the run, so that a writer reads only the chunks that may hold the
-- order_ids it looks for. Runs listed before it have none, and are read
-- through as before.
ALTER TABLE longrun_order_runs ADD COLUMN filter bytea;
