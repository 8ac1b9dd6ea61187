-- Every data row names a tenant. Without this check the application role
-- could write rows with tenant '' on a connection whose transaction-local
-- `infoctor.tenant` had expired (current_setting then returns ''), and those
-- rows would pass the row-level security WITH CHECK. Tenant names are
-- otherwise checked where tenants are created; a plain comparison keeps the
-- per-row cost of bulk loads low.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['resource_versions', 'resources',
        'idx_string', 'idx_token', 'idx_date', 'idx_number', 'idx_quantity',
        'idx_reference', 'idx_uri']
    LOOP
        EXECUTE format(
            'ALTER TABLE %I ADD CONSTRAINT %I CHECK (tenant <> '''')',
            t, t || '_tenant_not_empty');
    END LOOP;
END
$$;
