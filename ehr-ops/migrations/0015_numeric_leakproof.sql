-- Under row-level security PostgreSQL uses a comparison as an index
-- condition only when its function is LEAKPROOF, and the numeric
-- comparisons are not marked so. A quantity or number search then read
-- every row of the parameter (or of a composite's first value) and
-- filtered the values: 9,783 rows for the 198 HbA1c results above 7 % at
-- one million resources. The comparisons compare any two numerics,
-- NaN and infinities included, without raising an error, and return
-- nothing but their result, so a superuser marks them. Without superuser
-- rights these searches stay correct and read the wider range.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION numeric_eq(numeric, numeric) LEAKPROOF;
        ALTER FUNCTION numeric_ne(numeric, numeric) LEAKPROOF;
        ALTER FUNCTION numeric_lt(numeric, numeric) LEAKPROOF;
        ALTER FUNCTION numeric_le(numeric, numeric) LEAKPROOF;
        ALTER FUNCTION numeric_gt(numeric, numeric) LEAKPROOF;
        ALTER FUNCTION numeric_ge(numeric, numeric) LEAKPROOF;
    END IF;
END
$$;
