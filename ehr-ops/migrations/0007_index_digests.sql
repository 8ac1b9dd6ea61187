-- One digest per search index table of the rows the current version has
-- there, in the order of index::INDEX_TABLES; 0 means no rows. A write
-- rewrites only the tables whose digest changed, so an update that touches
-- one indexed element does not churn the others' B-tree, GIN and GiST
-- entries. NULL (rows written before this column existed) means unknown:
-- the next write rewrites every table.
ALTER TABLE resources ADD COLUMN index_digests bigint[]
    CHECK (index_digests IS NULL OR cardinality(index_digests) = 7);
-- NOTE: a server built before this column existed rewrites index rows
-- without updating the digests. Stop such servers before this migration
-- runs rather than mixing versions on one database.
