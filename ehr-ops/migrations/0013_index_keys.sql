-- The B-tree indexes of the search tables led with the text columns tenant,
-- resource_type and code (or id). Every comparison during an insertion
-- walked those variable-length columns before it reached the value, and a
-- bulk load spent close to half of PostgreSQL's time in B-tree insertion.
-- Each index now leads with one bigint hash that names the tenant, the
-- resource type and the parameter (param_key), the resource (resource_key)
-- or the reference target (target_key), followed by the values compared.
-- The text columns ride along as included columns where searches read them
-- from the index, and every query still checks them, so a hash collision
-- costs a few extra rows read, never a wrong match.
--
-- The keys are stored columns rather than index expressions. Under
-- row-level security PostgreSQL uses a condition as an index condition
-- only when it cannot leak row values, and a comparison of a stored column
-- with a value computed without the row's columns qualifies, where a
-- comparison of an expression over the row's text columns does not.

-- Names the rows of one search parameter of one resource type in a tenant.
CREATE FUNCTION idx_param_key(tenant text, resource_type text, code text)
    RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN hashtextextended(tenant || '|' || resource_type || '|' || code, 0);

-- Names one resource in a tenant.
CREATE FUNCTION idx_resource_key(tenant text, resource_type text, id text)
    RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN hashtextextended(tenant || '|' || resource_type || '|' || id, 0);

-- Names the references to one id in a tenant, whatever the target type.
CREATE FUNCTION idx_target_key(tenant text, target_id text)
    RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN hashtextextended(tenant || '|' || target_id, 0);

-- Index rows join their resource by resource_key.
ALTER TABLE resources
    ADD COLUMN resource_key bigint NOT NULL
    GENERATED ALWAYS AS (idx_resource_key(tenant, resource_type, id)) STORED;

DROP INDEX idx_string_lookup, idx_string_exact, idx_string_resource;
ALTER TABLE idx_string
    ADD COLUMN param_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_param_key(tenant, resource_type, code)) STORED,
    ADD COLUMN resource_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_resource_key(tenant, resource_type, id)) STORED;
CREATE INDEX idx_string_lookup ON idx_string (param_key, value_norm)
    INCLUDE (tenant, resource_type, code, id, resource_key);
CREATE INDEX idx_string_exact ON idx_string (param_key, value_exact);
CREATE INDEX idx_string_resource ON idx_string (resource_key);

DROP INDEX idx_token_lookup, idx_token_resource;
ALTER TABLE idx_token
    ADD COLUMN param_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_param_key(tenant, resource_type, code)) STORED,
    ADD COLUMN resource_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_resource_key(tenant, resource_type, id)) STORED;
CREATE INDEX idx_token_lookup ON idx_token (param_key, value, system)
    INCLUDE (tenant, resource_type, code, id, resource_key);
CREATE INDEX idx_token_resource ON idx_token (resource_key);

-- Dates: a GiST index over the key and both ends of the stored range. Its
-- bounding boxes prune by the start and the end at once, as the index over
-- the range type did, with fixed-width keys that cost about half as much
-- to insert.
DROP INDEX idx_date_span, idx_date_resource;
ALTER TABLE idx_date
    DROP COLUMN span,
    DROP COLUMN span_key,
    ADD COLUMN param_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_param_key(tenant, resource_type, code)) STORED,
    ADD COLUMN resource_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_resource_key(tenant, resource_type, id)) STORED;
DROP FUNCTION idx_date_key(text, text, text);
CREATE INDEX idx_date_lookup ON idx_date USING gist (param_key, low, high)
    INCLUDE (tenant, resource_type, code, id, resource_key);
CREATE INDEX idx_date_resource ON idx_date (resource_key);

DROP INDEX idx_number_lookup, idx_number_resource;
ALTER TABLE idx_number
    ADD COLUMN param_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_param_key(tenant, resource_type, code)) STORED,
    ADD COLUMN resource_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_resource_key(tenant, resource_type, id)) STORED;
CREATE INDEX idx_number_lookup ON idx_number (param_key, value)
    INCLUDE (tenant, resource_type, code, id, resource_key);
CREATE INDEX idx_number_resource ON idx_number (resource_key);

DROP INDEX idx_quantity_lookup, idx_quantity_resource;
ALTER TABLE idx_quantity
    ADD COLUMN param_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_param_key(tenant, resource_type, code)) STORED,
    ADD COLUMN resource_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_resource_key(tenant, resource_type, id)) STORED;
CREATE INDEX idx_quantity_lookup ON idx_quantity (param_key, value)
    INCLUDE (tenant, resource_type, code, id, resource_key);
-- Sorting by a quantity reads a resource's values from this index alone.
CREATE INDEX idx_quantity_resource ON idx_quantity (resource_key)
    INCLUDE (tenant, resource_type, id, code, value);

-- References: searches give the target id (and usually its type), reverse
-- lookups (_revinclude, $everything) the target alone. A reference that
-- names no local Type/id has a NULL target_key.
DROP INDEX idx_reference_target, idx_reference_resource;
ALTER TABLE idx_reference
    ADD COLUMN resource_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_resource_key(tenant, resource_type, id)) STORED,
    ADD COLUMN target_key bigint
        GENERATED ALWAYS AS (idx_target_key(tenant, target_id)) STORED;
CREATE INDEX idx_reference_target ON idx_reference
    (target_key, target_type, resource_type, code)
    INCLUDE (tenant, target_id, id, resource_key);
CREATE INDEX idx_reference_resource ON idx_reference (resource_key);

DROP INDEX idx_uri_lookup, idx_uri_resource;
ALTER TABLE idx_uri
    ADD COLUMN param_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_param_key(tenant, resource_type, code)) STORED,
    ADD COLUMN resource_key bigint NOT NULL
        GENERATED ALWAYS AS (idx_resource_key(tenant, resource_type, id)) STORED;
CREATE INDEX idx_uri_lookup ON idx_uri (param_key, value)
    INCLUDE (tenant, resource_type, code, id, resource_key);
CREATE INDEX idx_uri_resource ON idx_uri (resource_key);
