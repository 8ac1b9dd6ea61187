-- Each search table had a B-tree over resource_key, and the quantity table's
-- also carried the row's tenant, type, id, code and value. These indexes
-- answer equality alone: the rows of one resource or of a list of resources
-- (clearing rows before an update, `_include`, `$everything`, sorting, and
-- a filter probing a candidate resource). A hash index answers that with
-- one bucket page and no descent from a root, and a bulk load of the
-- 400-patient set ran about 5 % fewer instructions in PostgreSQL with hash
-- indexes here. Lists of keys (`= ANY`) are read through bitmap scans.
--
-- The included columns of the quantity index served searches that probed
-- each Observation with a code for a value. Those searches now read the
-- composite pairs through idx_quantity_lookup, and the rest read the few
-- heap rows of one resource, which were written together.
DROP INDEX idx_string_resource, idx_token_resource, idx_date_resource,
    idx_number_resource, idx_quantity_resource, idx_reference_resource,
    idx_uri_resource;
CREATE INDEX idx_string_resource ON idx_string USING hash (resource_key);
CREATE INDEX idx_token_resource ON idx_token USING hash (resource_key);
CREATE INDEX idx_date_resource ON idx_date USING hash (resource_key);
CREATE INDEX idx_number_resource ON idx_number USING hash (resource_key);
CREATE INDEX idx_quantity_resource ON idx_quantity USING hash (resource_key);
CREATE INDEX idx_reference_resource ON idx_reference USING hash (resource_key);
CREATE INDEX idx_uri_resource ON idx_uri USING hash (resource_key);
