-- The index keys were generated columns, computed by PostgreSQL for every
-- row written: two text concatenations and two hashes per row, about 5 % of
-- the instructions PostgreSQL ran in a bulk load. Writers now compute the
-- same functions (`idx_param_key`, `idx_resource_key`, `idx_target_key`)
-- and insert the keys with the tenant they hashed, so row-level security
-- still rejects a row meant for another tenant. Existing values stay.
ALTER TABLE resources ALTER COLUMN resource_key DROP EXPRESSION;
ALTER TABLE idx_string
    ALTER COLUMN param_key DROP EXPRESSION,
    ALTER COLUMN resource_key DROP EXPRESSION;
ALTER TABLE idx_token
    ALTER COLUMN param_key DROP EXPRESSION,
    ALTER COLUMN resource_key DROP EXPRESSION;
ALTER TABLE idx_date
    ALTER COLUMN param_key DROP EXPRESSION,
    ALTER COLUMN resource_key DROP EXPRESSION;
ALTER TABLE idx_number
    ALTER COLUMN param_key DROP EXPRESSION,
    ALTER COLUMN resource_key DROP EXPRESSION;
ALTER TABLE idx_quantity
    ALTER COLUMN param_key DROP EXPRESSION,
    ALTER COLUMN resource_key DROP EXPRESSION;
ALTER TABLE idx_reference
    ALTER COLUMN resource_key DROP EXPRESSION,
    ALTER COLUMN target_key DROP EXPRESSION;
ALTER TABLE idx_uri
    ALTER COLUMN param_key DROP EXPRESSION,
    ALTER COLUMN resource_key DROP EXPRESSION;
