-- Default string searches compare values in full Unicode case folding of
-- their lowercase form, where they compared the lowercase form alone, so ß,
-- ẞ and SS now match, and so do ς, σ and Σ. Folding changes a lowercase
-- value only where it contains one of the letters below, each listed with its
-- folding (CaseFolding.txt of Unicode 16.0, statuses C and F). This rewrites
-- the values indexed before.
CREATE TEMPORARY TABLE case_folds (
    letter text PRIMARY KEY,
    folded text NOT NULL
) ON COMMIT DROP;
INSERT INTO case_folds (letter, folded) VALUES
    ('µ', 'μ'), -- U+00B5 to U+03BC
    ('ß', 'ss'), -- U+00DF to U+0073 U+0073
    ('ŉ', 'ʼn'), -- U+0149 to U+02BC U+006E
    ('ſ', 's'), -- U+017F to U+0073
    ('ς', 'σ'), -- U+03C2 to U+03C3
    ('ϐ', 'β'), -- U+03D0 to U+03B2
    ('ϑ', 'θ'), -- U+03D1 to U+03B8
    ('ϕ', 'φ'), -- U+03D5 to U+03C6
    ('ϖ', 'π'), -- U+03D6 to U+03C0
    ('ϰ', 'κ'), -- U+03F0 to U+03BA
    ('ϱ', 'ρ'), -- U+03F1 to U+03C1
    ('ϵ', 'ε'), -- U+03F5 to U+03B5
    ('և', 'եւ'), -- U+0587 to U+0565 U+0582
    ('ᏸ', 'Ᏸ'), -- U+13F8 to U+13F0
    ('ᏹ', 'Ᏹ'), -- U+13F9 to U+13F1
    ('ᏺ', 'Ᏺ'), -- U+13FA to U+13F2
    ('ᏻ', 'Ᏻ'), -- U+13FB to U+13F3
    ('ᏼ', 'Ᏼ'), -- U+13FC to U+13F4
    ('ᏽ', 'Ᏽ'), -- U+13FD to U+13F5
    ('ᲀ', 'в'), -- U+1C80 to U+0432
    ('ᲁ', 'д'), -- U+1C81 to U+0434
    ('ᲂ', 'о'), -- U+1C82 to U+043E
    ('ᲃ', 'с'), -- U+1C83 to U+0441
    ('ᲄ', 'т'), -- U+1C84 to U+0442
    ('ᲅ', 'т'), -- U+1C85 to U+0442
    ('ᲆ', 'ъ'), -- U+1C86 to U+044A
    ('ᲇ', 'ѣ'), -- U+1C87 to U+0463
    ('ᲈ', 'ꙋ'), -- U+1C88 to U+A64B
    ('ẚ', 'aʾ'), -- U+1E9A to U+0061 U+02BE
    ('ꭰ', 'Ꭰ'), -- U+AB70 to U+13A0
    ('ꭱ', 'Ꭱ'), -- U+AB71 to U+13A1
    ('ꭲ', 'Ꭲ'), -- U+AB72 to U+13A2
    ('ꭳ', 'Ꭳ'), -- U+AB73 to U+13A3
    ('ꭴ', 'Ꭴ'), -- U+AB74 to U+13A4
    ('ꭵ', 'Ꭵ'), -- U+AB75 to U+13A5
    ('ꭶ', 'Ꭶ'), -- U+AB76 to U+13A6
    ('ꭷ', 'Ꭷ'), -- U+AB77 to U+13A7
    ('ꭸ', 'Ꭸ'), -- U+AB78 to U+13A8
    ('ꭹ', 'Ꭹ'), -- U+AB79 to U+13A9
    ('ꭺ', 'Ꭺ'), -- U+AB7A to U+13AA
    ('ꭻ', 'Ꭻ'), -- U+AB7B to U+13AB
    ('ꭼ', 'Ꭼ'), -- U+AB7C to U+13AC
    ('ꭽ', 'Ꭽ'), -- U+AB7D to U+13AD
    ('ꭾ', 'Ꭾ'), -- U+AB7E to U+13AE
    ('ꭿ', 'Ꭿ'), -- U+AB7F to U+13AF
    ('ꮀ', 'Ꮀ'), -- U+AB80 to U+13B0
    ('ꮁ', 'Ꮁ'), -- U+AB81 to U+13B1
    ('ꮂ', 'Ꮂ'), -- U+AB82 to U+13B2
    ('ꮃ', 'Ꮃ'), -- U+AB83 to U+13B3
    ('ꮄ', 'Ꮄ'), -- U+AB84 to U+13B4
    ('ꮅ', 'Ꮅ'), -- U+AB85 to U+13B5
    ('ꮆ', 'Ꮆ'), -- U+AB86 to U+13B6
    ('ꮇ', 'Ꮇ'), -- U+AB87 to U+13B7
    ('ꮈ', 'Ꮈ'), -- U+AB88 to U+13B8
    ('ꮉ', 'Ꮉ'), -- U+AB89 to U+13B9
    ('ꮊ', 'Ꮊ'), -- U+AB8A to U+13BA
    ('ꮋ', 'Ꮋ'), -- U+AB8B to U+13BB
    ('ꮌ', 'Ꮌ'), -- U+AB8C to U+13BC
    ('ꮍ', 'Ꮍ'), -- U+AB8D to U+13BD
    ('ꮎ', 'Ꮎ'), -- U+AB8E to U+13BE
    ('ꮏ', 'Ꮏ'), -- U+AB8F to U+13BF
    ('ꮐ', 'Ꮐ'), -- U+AB90 to U+13C0
    ('ꮑ', 'Ꮑ'), -- U+AB91 to U+13C1
    ('ꮒ', 'Ꮒ'), -- U+AB92 to U+13C2
    ('ꮓ', 'Ꮓ'), -- U+AB93 to U+13C3
    ('ꮔ', 'Ꮔ'), -- U+AB94 to U+13C4
    ('ꮕ', 'Ꮕ'), -- U+AB95 to U+13C5
    ('ꮖ', 'Ꮖ'), -- U+AB96 to U+13C6
    ('ꮗ', 'Ꮗ'), -- U+AB97 to U+13C7
    ('ꮘ', 'Ꮘ'), -- U+AB98 to U+13C8
    ('ꮙ', 'Ꮙ'), -- U+AB99 to U+13C9
    ('ꮚ', 'Ꮚ'), -- U+AB9A to U+13CA
    ('ꮛ', 'Ꮛ'), -- U+AB9B to U+13CB
    ('ꮜ', 'Ꮜ'), -- U+AB9C to U+13CC
    ('ꮝ', 'Ꮝ'), -- U+AB9D to U+13CD
    ('ꮞ', 'Ꮞ'), -- U+AB9E to U+13CE
    ('ꮟ', 'Ꮟ'), -- U+AB9F to U+13CF
    ('ꮠ', 'Ꮠ'), -- U+ABA0 to U+13D0
    ('ꮡ', 'Ꮡ'), -- U+ABA1 to U+13D1
    ('ꮢ', 'Ꮢ'), -- U+ABA2 to U+13D2
    ('ꮣ', 'Ꮣ'), -- U+ABA3 to U+13D3
    ('ꮤ', 'Ꮤ'), -- U+ABA4 to U+13D4
    ('ꮥ', 'Ꮥ'), -- U+ABA5 to U+13D5
    ('ꮦ', 'Ꮦ'), -- U+ABA6 to U+13D6
    ('ꮧ', 'Ꮧ'), -- U+ABA7 to U+13D7
    ('ꮨ', 'Ꮨ'), -- U+ABA8 to U+13D8
    ('ꮩ', 'Ꮩ'), -- U+ABA9 to U+13D9
    ('ꮪ', 'Ꮪ'), -- U+ABAA to U+13DA
    ('ꮫ', 'Ꮫ'), -- U+ABAB to U+13DB
    ('ꮬ', 'Ꮬ'), -- U+ABAC to U+13DC
    ('ꮭ', 'Ꮭ'), -- U+ABAD to U+13DD
    ('ꮮ', 'Ꮮ'), -- U+ABAE to U+13DE
    ('ꮯ', 'Ꮯ'), -- U+ABAF to U+13DF
    ('ꮰ', 'Ꮰ'), -- U+ABB0 to U+13E0
    ('ꮱ', 'Ꮱ'), -- U+ABB1 to U+13E1
    ('ꮲ', 'Ꮲ'), -- U+ABB2 to U+13E2
    ('ꮳ', 'Ꮳ'), -- U+ABB3 to U+13E3
    ('ꮴ', 'Ꮴ'), -- U+ABB4 to U+13E4
    ('ꮵ', 'Ꮵ'), -- U+ABB5 to U+13E5
    ('ꮶ', 'Ꮶ'), -- U+ABB6 to U+13E6
    ('ꮷ', 'Ꮷ'), -- U+ABB7 to U+13E7
    ('ꮸ', 'Ꮸ'), -- U+ABB8 to U+13E8
    ('ꮹ', 'Ꮹ'), -- U+ABB9 to U+13E9
    ('ꮺ', 'Ꮺ'), -- U+ABBA to U+13EA
    ('ꮻ', 'Ꮻ'), -- U+ABBB to U+13EB
    ('ꮼ', 'Ꮼ'), -- U+ABBC to U+13EC
    ('ꮽ', 'Ꮽ'), -- U+ABBD to U+13ED
    ('ꮾ', 'Ꮾ'), -- U+ABBE to U+13EE
    ('ꮿ', 'Ꮿ'), -- U+ABBF to U+13EF
    ('ﬀ', 'ff'), -- U+FB00 to U+0066 U+0066
    ('ﬁ', 'fi'), -- U+FB01 to U+0066 U+0069
    ('ﬂ', 'fl'), -- U+FB02 to U+0066 U+006C
    ('ﬃ', 'ffi'), -- U+FB03 to U+0066 U+0066 U+0069
    ('ﬄ', 'ffl'), -- U+FB04 to U+0066 U+0066 U+006C
    ('ﬅ', 'st'), -- U+FB05 to U+0073 U+0074
    ('ﬆ', 'st'), -- U+FB06 to U+0073 U+0074
    ('ﬓ', 'մն'), -- U+FB13 to U+0574 U+0576
    ('ﬔ', 'մե'), -- U+FB14 to U+0574 U+0565
    ('ﬕ', 'մի'), -- U+FB15 to U+0574 U+056B
    ('ﬖ', 'վն'), -- U+FB16 to U+057E U+0576
    ('ﬗ', 'մխ'); -- U+FB17 to U+0574 U+056D

-- Replaces each listed letter of a value with its folding.
CREATE FUNCTION pg_temp.fold_letters(value text) RETURNS text
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    fold record;
BEGIN
    FOR fold IN SELECT letter, folded FROM case_folds WHERE strpos(value, letter) > 0 LOOP
        value := replace(value, fold.letter, fold.folded);
    END LOOP;
    RETURN value;
END
$$;

-- Cuts a value to at most 1,024 bytes at a character boundary, as the store
-- cuts indexed text. Each pass drops no more characters than the excess
-- needs at four bytes each, so the longest prefix that fits remains.
CREATE FUNCTION pg_temp.cut_indexed(value text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    value := left(value, 1024);
    WHILE octet_length(value) > 1024 LOOP
        value := left(value, length(value) - (octet_length(value) - 1024 + 3) / 4);
    END LOOP;
    RETURN value;
END
$$;

-- Row-level security applies to the table's owner too (FORCE), so the owner
-- lifts it while this transaction rewrites every tenant's rows, and the lock
-- that ALTER TABLE takes keeps other sessions out meanwhile. A role that is
-- neither the owner nor a superuser sees no rows here, and those rows keep
-- their old form until their resource is next written.
DO $$
DECLARE
    owner boolean := pg_has_role(current_user,
        (SELECT relowner FROM pg_class WHERE oid = 'idx_string'::regclass), 'USAGE');
    letters text := (SELECT '[' || string_agg(letter, '') || ']' FROM case_folds);
BEGIN
    IF owner THEN
        ALTER TABLE idx_string NO FORCE ROW LEVEL SECURITY;
    END IF;
    WITH folded AS (
        SELECT ctid AS row_id,
            pg_temp.fold_letters(COALESCE(whole_norm, value_norm)) AS value
        FROM idx_string
        WHERE COALESCE(whole_norm, value_norm) ~ letters
    )
    UPDATE idx_string AS s
    SET value_norm = pg_temp.cut_indexed(folded.value),
        whole_norm = CASE WHEN octet_length(folded.value) > 1024 THEN folded.value END
    FROM folded
    WHERE s.ctid = folded.row_id;
    IF owner THEN
        ALTER TABLE idx_string FORCE ROW LEVEL SECURITY;
    END IF;
END
$$;

DROP FUNCTION pg_temp.fold_letters(text);
DROP FUNCTION pg_temp.cut_indexed(text);
