-- Operational FHIR store: tenants, resource versions, current resources and
-- the search index tables filled at write time.
--
-- Every table carries the tenant in its primary key and is protected by
-- row-level security with FORCE, so even the table owner sees only the rows of
-- the tenant named by the transaction-local setting `infoctor.tenant`. The
-- application connects as a role that owns nothing (see roles.rs).

CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE tenants (
    tenant      text COLLATE "C" PRIMARY KEY
                CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every version of every resource, append-only. Change capture reads this
-- table; a delete is a version with operation 'delete' and no body.
CREATE TABLE resource_versions (
    tenant         text COLLATE "C" NOT NULL,
    resource_type  text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    version_id     bigint NOT NULL,
    last_updated   timestamptz NOT NULL,
    operation      text NOT NULL CHECK (operation IN ('create', 'update', 'delete')),
    resource       jsonb COMPRESSION lz4,
    PRIMARY KEY (tenant, resource_type, id, version_id),
    CHECK ((operation = 'delete') = (resource IS NULL))
);
CREATE INDEX resource_versions_type_history
    ON resource_versions (tenant, resource_type, last_updated);

-- The current version of each resource, deleted ones included (they read as
-- 410 Gone). content_hash makes reloading identical content a no-op.
CREATE TABLE resources (
    tenant         text COLLATE "C" NOT NULL,
    resource_type  text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    version_id     bigint NOT NULL,
    last_updated   timestamptz NOT NULL,
    deleted        boolean NOT NULL DEFAULT false,
    content_hash   bytea,
    -- `deleted` rides in the key index so the check that a matched resource
    -- is live is an index-only lookup.
    PRIMARY KEY (tenant, resource_type, id) INCLUDE (deleted)
);
CREATE INDEX resources_last_updated
    ON resources (tenant, resource_type, last_updated, id);

-- Search indexes: one row per extracted value of the current version. Rows of
-- a resource are replaced on every write and removed on delete.
CREATE TABLE idx_string (
    tenant         text COLLATE "C" NOT NULL,
    resource_type  text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    code           text COLLATE "C" NOT NULL,
    value_norm     text COLLATE "C" NOT NULL,
    value_exact    text COLLATE "C" NOT NULL
);
-- Lookup indexes carry the resource id (INCLUDE) so searches are answered by
-- index-only scans once VACUUM has marked the pages all-visible.
CREATE INDEX idx_string_lookup ON idx_string (tenant, resource_type, code, value_norm) INCLUDE (id);
CREATE INDEX idx_string_exact ON idx_string (tenant, resource_type, code, value_exact);
CREATE INDEX idx_string_trgm ON idx_string USING gin (value_norm gin_trgm_ops);
CREATE INDEX idx_string_resource ON idx_string (tenant, resource_type, id);

CREATE TABLE idx_token (
    tenant         text COLLATE "C" NOT NULL,
    resource_type  text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    code           text COLLATE "C" NOT NULL,
    system         text COLLATE "C",
    value          text COLLATE "C"
);
CREATE INDEX idx_token_lookup ON idx_token (tenant, resource_type, code, value, system) INCLUDE (id);
CREATE INDEX idx_token_resource ON idx_token (tenant, resource_type, id);

CREATE TABLE idx_date (
    tenant         text COLLATE "C" NOT NULL,
    resource_type  text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    code           text COLLATE "C" NOT NULL,
    low            timestamptz NOT NULL,
    high           timestamptz NOT NULL,
    span           tstzrange GENERATED ALWAYS AS (tstzrange(low, high, '[]')) STORED
);
-- Date searches compare ranges (a day, a period) with ranges; a GiST index
-- over the stored range answers overlap and containment from both ends at
-- once, where B-tree indexes on low and high could only bound one end.
CREATE INDEX idx_date_range ON idx_date
    USING gist (tenant, resource_type, code, span) INCLUDE (id);
CREATE INDEX idx_date_resource ON idx_date (tenant, resource_type, id);

CREATE TABLE idx_number (
    tenant         text COLLATE "C" NOT NULL,
    resource_type  text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    code           text COLLATE "C" NOT NULL,
    value          numeric NOT NULL,
    low            numeric NOT NULL,
    high           numeric NOT NULL
);
CREATE INDEX idx_number_lookup ON idx_number (tenant, resource_type, code, value) INCLUDE (id);
CREATE INDEX idx_number_resource ON idx_number (tenant, resource_type, id);

CREATE TABLE idx_quantity (
    tenant         text COLLATE "C" NOT NULL,
    resource_type  text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    code           text COLLATE "C" NOT NULL,
    value          numeric NOT NULL,
    low            numeric NOT NULL,
    high           numeric NOT NULL,
    system         text COLLATE "C",
    unit_code      text COLLATE "C",
    unit           text COLLATE "C"
);
CREATE INDEX idx_quantity_lookup ON idx_quantity (tenant, resource_type, code, value) INCLUDE (id);
CREATE INDEX idx_quantity_resource ON idx_quantity (tenant, resource_type, id) INCLUDE (code, value);

CREATE TABLE idx_reference (
    tenant         text COLLATE "C" NOT NULL,
    resource_type  text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    code           text COLLATE "C" NOT NULL,
    target_type    text COLLATE "C",
    target_id      text COLLATE "C",
    -- The reference text, kept only when it names no local Type/id
    -- (absolute URLs, canonicals), the one case searched by text.
    url            text COLLATE "C",
    CHECK ((target_id IS NULL) = (url IS NOT NULL))
);
-- One index serves both directions: searches (`Observation?subject=X`
-- filters on target_id, resource_type and code) and reverse lookups
-- (`_revinclude`, `$everything` and chains filter on target_id and type).
CREATE INDEX idx_reference_target
    ON idx_reference (tenant, target_id, target_type, resource_type, code) INCLUDE (id);
-- Absolute URLs that name no local Type/id are the only ones searched by text.
CREATE INDEX idx_reference_url ON idx_reference (tenant, url) WHERE target_id IS NULL;
CREATE INDEX idx_reference_resource ON idx_reference (tenant, resource_type, id);

CREATE TABLE idx_uri (
    tenant         text COLLATE "C" NOT NULL,
    resource_type  text COLLATE "C" NOT NULL,
    id             text COLLATE "C" NOT NULL,
    code           text COLLATE "C" NOT NULL,
    value          text COLLATE "C" NOT NULL
);
CREATE INDEX idx_uri_lookup ON idx_uri (tenant, resource_type, code, value) INCLUDE (id);
CREATE INDEX idx_uri_resource ON idx_uri (tenant, resource_type, id);

-- Row-level security on every table, forced on the owner too.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'resource_versions', 'resources',
        'idx_string', 'idx_token', 'idx_date', 'idx_number', 'idx_quantity',
        'idx_reference', 'idx_uri']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant = current_setting(''infoctor.tenant'', true)) '
            'WITH CHECK (tenant = current_setting(''infoctor.tenant'', true))', t);
    END LOOP;
END
$$;

-- The administrator (the role that ran this migration) lists and creates
-- tenants; no other table gets such a policy.
CREATE POLICY tenant_administration ON tenants TO CURRENT_USER USING (true) WITH CHECK (true);

-- Under row-level security PostgreSQL only uses a condition as an index
-- condition when its operator is LEAKPROOF, and the range operators are not
-- marked so. They cannot fail or reveal anything beyond their result, so a
-- superuser marks them; without superuser rights date searches stay correct
-- but scan every date of the type.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION range_overlaps(anyrange, anyrange) LEAKPROOF;
        ALTER FUNCTION range_contained_by(anyrange, anyrange) LEAKPROOF;
        ALTER FUNCTION range_after(anyrange, anyrange) LEAKPROOF;
        ALTER FUNCTION range_before(anyrange, anyrange) LEAKPROOF;
    END IF;
END
$$;
