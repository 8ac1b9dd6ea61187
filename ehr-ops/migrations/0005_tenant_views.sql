-- SQL on FHIR ViewDefinitions that a tenant adds to its lakehouse, one row per
-- version. ViewDefinition is not an R4 resource type, so definitions live here
-- rather than in resource_versions: they are neither searchable through the
-- FHIR API nor part of the captured change log.
--
-- Versions are never rewritten. Retiring a view sets retired_at and
-- retired_by on its latest version, and a later version makes the view live
-- again. The application role may update those two columns only (see
-- roles.rs).
CREATE TABLE tenant_views (
    tenant         text COLLATE "C" NOT NULL CHECK (tenant <> ''),
    name           text COLLATE "C" NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    version        integer NOT NULL CHECK (version >= 1),
    resource_type  text COLLATE "C" NOT NULL,
    definition     jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL,
    retired_at     timestamptz,
    retired_by     text,
    PRIMARY KEY (tenant, name, version),
    CHECK ((retired_at IS NULL) = (retired_by IS NULL))
);

ALTER TABLE tenant_views ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_views FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_views
    USING (tenant = current_setting('infoctor.tenant', true))
    WITH CHECK (tenant = current_setting('infoctor.tenant', true));
