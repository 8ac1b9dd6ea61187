-- Date searches find their candidates through a GiST index over the stored
-- span. Its leading key used to be the text columns tenant, resource_type
-- and code, which btree_gist compares as variable-length keys on every
-- step of every insertion; that made each date row several times dearer
-- to write than a B-tree row. The leading key is now one bigint that names
-- the tenant, resource type and parameter together, and the text columns
-- ride along as included values, so searches stay index-only scans and
-- check the text itself, never trusting the hash alone.
CREATE FUNCTION idx_date_key(tenant text, resource_type text, code text)
    RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN hashtextextended(tenant || '|' || resource_type || '|' || code, 0);

DROP INDEX idx_date_range;
ALTER TABLE idx_date
    ADD COLUMN span_key bigint NOT NULL
    GENERATED ALWAYS AS (idx_date_key(tenant, resource_type, code)) STORED;
CREATE INDEX idx_date_span ON idx_date
    USING gist (span_key, span) INCLUDE (tenant, resource_type, code, id, low, high);
