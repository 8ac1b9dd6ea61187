-- String values longer than the indexed columns take (1,024 bytes) are cut
-- there. These columns keep such values whole, and stay NULL for the short
-- values that are nearly all of them, so searches compare whole strings:
-- `:exact` and prefixes check them after the B-tree lookup, and `:contains`
-- finds text past the cut through the trigram index below.
ALTER TABLE idx_string
    ADD COLUMN whole_norm text,
    ADD COLUMN whole_exact text;
CREATE INDEX idx_string_whole_trgm ON idx_string
    USING gin (whole_norm gin_trgm_ops) WHERE whole_norm IS NOT NULL;
-- NOTE: rows written before this migration have no whole values; searches
-- read their cut text as whole until the resource is written again.
