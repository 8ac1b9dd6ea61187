-- A search parameter whose expression is the union of other parameters'
-- expressions (Observation's combo-code is code | component-code) no
-- longer has index rows of its own: searches on it read the rows of the
-- parameters it unites. Rows written under those codes before are never
-- read again; this removes them. Under row-level security a role that is
-- not a superuser sees no rows here, and the rows then stay until their
-- resource is next written, harmless but for their space.
DELETE FROM idx_token
    WHERE resource_type = 'Observation'
    AND code IN ('combo-code', 'combo-data-absent-reason', 'combo-value-concept');
DELETE FROM idx_quantity
    WHERE resource_type = 'Observation'
    AND code = 'combo-value-quantity';
