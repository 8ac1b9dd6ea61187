-- Index rows are extracted by the server, so when its extraction rules
-- change, rows stored before miss what the new rules extract. Each tenant
-- records the rules its rows follow. A server whose rules are newer
-- rebuilds the tenant's rows when it opens its pools, before it serves
-- the tenant, and then raises the number. Tenants stored before this
-- column existed start at 0.
ALTER TABLE tenants ADD COLUMN index_rules integer NOT NULL DEFAULT 0;
