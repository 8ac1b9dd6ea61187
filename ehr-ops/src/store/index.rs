//! Persists the search index rows extracted from a resource.
//!
//! Rows for many resources go to PostgreSQL in one statement per index table
//! (arrays unnested on the server), so a bulk load of a thousand resources
//! costs a handful of round trips rather than one per value.
//!
//! Each resource keeps one digest per index table of the rows its current
//! version has there. A write compares them with the new rows' digests
//! and rewrites only the tables that differ. An update that changes an
//! Observation's status touches its token rows and leaves its date,
//! quantity and reference rows, and their GiST and B-tree entries, alone.

use infoctor_fhir::search::{IndexEntry, IndexValue};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::keys;

/// Maximum text in an indexed column of an index row, in bytes.
/// PostgreSQL's B-tree rows cannot exceed about 2.7 kB, so longer values
/// are cut at a character boundary, and searches cut their values the same
/// way. String rows also keep a longer value whole in a column outside the
/// B-tree indexes, which searches check, so `:exact`, `:contains` and
/// prefixes compare whole strings.
// NOTE: token, URI and reference values over this size are compared by
// their first 1,024 bytes only, so two such values that agree there match
// each other.
pub const MAX_INDEXED_BYTES: usize = 1024;

/// Cuts `text` to at most [`MAX_INDEXED_BYTES`] at a character boundary.
pub fn truncate_indexed(text: &str) -> &str {
    if text.len() <= MAX_INDEXED_BYTES {
        return text;
    }
    let mut end = MAX_INDEXED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn cut(text: &str) -> String {
    truncate_indexed(text).to_owned()
}

fn cut_optional(text: &Option<String>) -> Option<String> {
    text.as_deref().map(cut)
}

/// Returns the whole text when [`truncate_indexed`] would cut it.
fn whole_if_cut(text: &str) -> Option<String> {
    (text.len() > MAX_INDEXED_BYTES).then(|| text.to_owned())
}

/// The key of one resource whose index rows are written.
#[derive(Debug, Clone, Copy)]
pub struct ResourceKey<'a> {
    /// Resource type.
    pub resource_type: &'a str,
    /// Resource id.
    pub id: &'a str,
}

/// The columns every index row has, with the keys computed from them.
/// Reference rows are looked up by their target and have no `param_key`.
#[derive(Default)]
struct Columns {
    resource_type: Vec<String>,
    id: Vec<String>,
    code: Vec<String>,
    resource_key: Vec<i64>,
    param_key: Vec<i64>,
}

impl Columns {
    fn push(&mut self, key: ResourceKey<'_>, resource_key: i64, code: &str) {
        self.resource_type.push(key.resource_type.to_owned());
        self.id.push(key.id.to_owned());
        self.code.push(code.to_owned());
        self.resource_key.push(resource_key);
    }

    fn push_with_param(
        &mut self,
        tenant: &str,
        key: ResourceKey<'_>,
        resource_key: i64,
        code: &str,
    ) {
        self.push(key, resource_key, code);
        self.param_key
            .push(keys::param_key(tenant, key.resource_type, code));
    }
}

type Texts = Vec<String>;
type OptionalTexts = Vec<Option<String>>;
type Instants = Vec<chrono::DateTime<chrono::Utc>>;
type Decimals = Vec<Decimal>;

/// The index tables, in the order of [`Digests`] and [`TableSet`] bits.
pub const INDEX_TABLES: [&str; 7] = [
    "idx_string",
    "idx_token",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_reference",
    "idx_uri",
];

/// One index row as stored, text already cut to [`MAX_INDEXED_BYTES`].
enum Row {
    String {
        normalized: String,
        exact: String,
        /// The whole normalized text, only when `normalized` is cut.
        whole_normalized: Option<String>,
        /// The whole text as written, only when `exact` is cut.
        whole_exact: Option<String>,
    },
    Token {
        system: Option<String>,
        value: Option<String>,
    },
    Date {
        low: chrono::DateTime<chrono::Utc>,
        high: chrono::DateTime<chrono::Utc>,
    },
    Number {
        value: Decimal,
        low: Decimal,
        high: Decimal,
    },
    Quantity {
        value: Decimal,
        low: Decimal,
        high: Decimal,
        system: Option<String>,
        unit_code: Option<String>,
        unit: Option<String>,
    },
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: Option<String>,
    },
    Uri {
        value: String,
    },
}

impl Row {
    /// Converts an entry into its stored row; `None` for an entry no search can match.
    fn of(entry: &IndexEntry) -> Option<Row> {
        Some(match &entry.value {
            IndexValue::String { normalized, exact } => Row::String {
                normalized: cut(normalized),
                exact: cut(exact),
                whole_normalized: whole_if_cut(normalized),
                whole_exact: whole_if_cut(exact),
            },
            // A token with neither system nor code (a CodeableConcept's bare
            // text) can match no token search, so it is not stored.
            IndexValue::Token {
                system: None,
                code: None,
                ..
            } => return None,
            IndexValue::Token { system, code, .. } => Row::Token {
                system: cut_optional(system),
                value: cut_optional(code),
            },
            IndexValue::Date { low, high } => {
                // A Period whose end precedes its start breaks FHIR's per-1
                // rule. It is stored as the span between the two instants,
                // because PostgreSQL cannot build a range that ends first.
                let (low, high) = if low <= high {
                    (*low, *high)
                } else {
                    (*high, *low)
                };
                Row::Date { low, high }
            }
            IndexValue::Number { value, low, high } => Row::Number {
                value: *value,
                low: *low,
                high: *high,
            },
            IndexValue::Quantity {
                value,
                low,
                high,
                system,
                code,
                unit,
            } => Row::Quantity {
                value: *value,
                low: *low,
                high: *high,
                system: cut_optional(system),
                unit_code: cut_optional(code),
                unit: cut_optional(unit),
            },
            IndexValue::Reference {
                target_type,
                target_id,
                url,
            } => Row::Reference {
                target_type: target_type.clone(),
                target_id: cut_optional(target_id),
                url: if target_id.is_some() {
                    None
                } else {
                    Some(cut(url))
                },
            },
            IndexValue::Uri { value } => Row::Uri { value: cut(value) },
        })
    }

    /// Position of the row's table in [`INDEX_TABLES`].
    fn table(&self) -> usize {
        match self {
            Row::String { .. } => 0,
            Row::Token { .. } => 1,
            Row::Date { .. } => 2,
            Row::Number { .. } => 3,
            Row::Quantity { .. } => 4,
            Row::Reference { .. } => 5,
            Row::Uri { .. } => 6,
        }
    }

    /// Feeds every stored column to `hasher`, each length-prefixed so no two
    /// different rows produce the same byte stream.
    fn feed(&self, code: &str, hasher: &mut Sha256) {
        fn text(hasher: &mut Sha256, value: &str) {
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
        }
        fn optional(hasher: &mut Sha256, value: &Option<String>) {
            match value {
                None => hasher.update([0u8]),
                Some(value) => {
                    hasher.update([1u8]);
                    text(hasher, value);
                }
            }
        }
        fn decimal(hasher: &mut Sha256, value: &Decimal) {
            // The text keeps the scale, which the numeric column keeps too.
            text(hasher, &value.to_string());
        }
        fn instant(hasher: &mut Sha256, value: &chrono::DateTime<chrono::Utc>) {
            hasher.update(value.timestamp_micros().to_le_bytes());
        }
        text(hasher, code);
        match self {
            Row::String {
                normalized,
                exact,
                whole_normalized,
                whole_exact,
            } => {
                text(hasher, normalized);
                text(hasher, exact);
                optional(hasher, whole_normalized);
                optional(hasher, whole_exact);
            }
            Row::Token { system, value } => {
                optional(hasher, system);
                optional(hasher, value);
            }
            Row::Date { low, high } => {
                instant(hasher, low);
                instant(hasher, high);
            }
            Row::Number { value, low, high } => {
                decimal(hasher, value);
                decimal(hasher, low);
                decimal(hasher, high);
            }
            Row::Quantity {
                value,
                low,
                high,
                system,
                unit_code,
                unit,
            } => {
                decimal(hasher, value);
                decimal(hasher, low);
                decimal(hasher, high);
                optional(hasher, system);
                optional(hasher, unit_code);
                optional(hasher, unit);
            }
            Row::Reference {
                target_type,
                target_id,
                url,
            } => {
                optional(hasher, target_type);
                optional(hasher, target_id);
                optional(hasher, url);
            }
            Row::Uri { value } => text(hasher, value),
        }
    }
}

/// A set of index tables, where bit `i` is `INDEX_TABLES[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSet(u8);

impl TableSet {
    /// Every index table.
    pub const ALL: TableSet = TableSet(0x7f);
    /// No table.
    pub const NONE: TableSet = TableSet(0);

    /// Returns whether the set contains the table at `index` in [`INDEX_TABLES`].
    pub fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }

    /// Returns whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn with(self, index: usize) -> TableSet {
        TableSet(self.0 | (1 << index))
    }

    /// Returns the tables in either set.
    pub fn union(self, other: TableSet) -> TableSet {
        TableSet(self.0 | other.0)
    }

    /// Returns the tables in both sets.
    pub fn intersect(self, other: TableSet) -> TableSet {
        TableSet(self.0 & other.0)
    }
}

/// Returns the tables in which rows with these digests exist.
pub fn nonempty_tables(digests: &Digests) -> TableSet {
    digests
        .iter()
        .enumerate()
        .filter(|(_, digest)| **digest != 0)
        .fold(TableSet::NONE, |set, (table, _)| set.with(table))
}

/// Per-table digests of one resource's index rows, in [`INDEX_TABLES`]
/// order, where 0 means no rows. Stored in `resources.index_digests`.
pub type Digests = [i64; 7];

/// The digests of a resource without index rows (deleted, or not yet created).
pub const NO_ROWS: Digests = [0; 7];

/// Computes the per-table digests of the rows `entries` store.
pub fn digests(entries: &[IndexEntry]) -> Digests {
    let mut hashers: [Option<Sha256>; 7] = Default::default();
    for entry in entries {
        if let Some(row) = Row::of(entry) {
            let hasher = hashers[row.table()].get_or_insert_with(Sha256::new);
            row.feed(&entry.code, hasher);
        }
    }
    hashers.map(|hasher| match hasher {
        None => 0,
        Some(hasher) => {
            let bytes: [u8; 8] = hasher.finalize()[..8]
                .try_into()
                .expect("a SHA-256 digest is 32 bytes");
            // 0 is reserved for an empty table.
            match i64::from_le_bytes(bytes) {
                0 => 1,
                digest => digest,
            }
        }
    })
}

/// The tables a write must clear and the tables it must fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexPlan {
    /// Tables holding rows of the previous version that differ from the new rows.
    pub clear: TableSet,
    /// Tables that must receive the new version's rows.
    pub insert: TableSet,
}

/// Compares the stored digests (`None` when unknown, so every table may have
/// rows) with the new ones. The plan is the least work that leaves the index
/// tables with exactly the new rows.
pub fn plan(stored: Option<&[i64]>, new: &Digests) -> IndexPlan {
    let stored: Option<&Digests> = stored.and_then(|s| s.try_into().ok());
    let mut plan = IndexPlan {
        clear: TableSet::NONE,
        insert: TableSet::NONE,
    };
    for (table, &digest) in new.iter().enumerate() {
        match stored {
            Some(old) if old[table] == digest => {}
            Some(old) => {
                if old[table] != 0 {
                    plan.clear = plan.clear.with(table);
                }
                if digest != 0 {
                    plan.insert = plan.insert.with(table);
                }
            }
            None => {
                plan.clear = plan.clear.with(table);
                if digest != 0 {
                    plan.insert = plan.insert.with(table);
                }
            }
        }
    }
    plan
}

#[derive(Default)]
struct Rows {
    string: (Columns, Texts, Texts, OptionalTexts, OptionalTexts),
    token: (Columns, OptionalTexts, OptionalTexts),
    date: (Columns, Instants, Instants),
    number: (Columns, Decimals, Decimals, Decimals),
    quantity: QuantityRows,
    reference: (
        Columns,
        OptionalTexts,
        OptionalTexts,
        OptionalTexts,
        Vec<Option<i64>>,
    ),
    uri: (Columns, Texts),
}

#[derive(Default)]
struct QuantityRows {
    columns: Columns,
    value: Vec<Decimal>,
    low: Vec<Decimal>,
    high: Vec<Decimal>,
    system: Vec<Option<String>>,
    unit_code: Vec<Option<String>>,
    unit: Vec<Option<String>>,
}

impl Rows {
    fn add(&mut self, tenant: &str, key: ResourceKey<'_>, resource_key: i64, code: &str, row: Row) {
        let columns =
            |columns: &mut Columns| columns.push_with_param(tenant, key, resource_key, code);
        match row {
            Row::String {
                normalized,
                exact,
                whole_normalized,
                whole_exact,
            } => {
                columns(&mut self.string.0);
                self.string.1.push(normalized);
                self.string.2.push(exact);
                self.string.3.push(whole_normalized);
                self.string.4.push(whole_exact);
            }
            Row::Token { system, value } => {
                columns(&mut self.token.0);
                self.token.1.push(system);
                self.token.2.push(value);
            }
            Row::Date { low, high } => {
                columns(&mut self.date.0);
                self.date.1.push(low);
                self.date.2.push(high);
            }
            Row::Number { value, low, high } => {
                columns(&mut self.number.0);
                self.number.1.push(value);
                self.number.2.push(low);
                self.number.3.push(high);
            }
            Row::Quantity {
                value,
                low,
                high,
                system,
                unit_code,
                unit,
            } => {
                let rows = &mut self.quantity;
                columns(&mut rows.columns);
                rows.value.push(value);
                rows.low.push(low);
                rows.high.push(high);
                rows.system.push(system);
                rows.unit_code.push(unit_code);
                rows.unit.push(unit);
            }
            Row::Reference {
                target_type,
                target_id,
                url,
            } => {
                self.reference.0.push(key, resource_key, code);
                self.reference
                    .4
                    .push(target_id.as_deref().map(|id| keys::target_key(tenant, id)));
                self.reference.1.push(target_type);
                self.reference.2.push(target_id);
                self.reference.3.push(url);
            }
            Row::Uri { value } => {
                columns(&mut self.uri.0);
                self.uri.1.push(value);
            }
        }
    }
}

/// Deletes the index rows in `tables` of the given resources (all of one
/// type).
pub async fn clear(
    conn: &mut PgConnection,
    resource_type: &str,
    ids: &[String],
    tables: TableSet,
) -> Result<(), sqlx::Error> {
    for table in 0..INDEX_TABLES.len() {
        if tables.contains(table) {
            clear_table(conn, table, resource_type, ids).await?;
        }
    }
    Ok(())
}

async fn clear_table(
    conn: &mut PgConnection,
    table: usize,
    resource_type: &str,
    ids: &[String],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let statement = format!(
        "DELETE FROM {} WHERE resource_key = ANY(ARRAY( \
           SELECT idx_resource_key(current_setting('infoctor.tenant'), $1, k) FROM unnest($2::text[]) AS k)) \
         AND tenant = current_setting('infoctor.tenant') AND resource_type = $1 AND id = ANY($2)",
        INDEX_TABLES[table]
    );
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(resource_type)
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Inserts the index rows of many resources of `tenant`, each into the given
/// tables only. The caller's transaction must be scoped to `tenant`, because
/// row-level security rejects the rows of any other tenant.
pub async fn insert(
    conn: &mut PgConnection,
    tenant: &str,
    resources: &[(ResourceKey<'_>, &[IndexEntry], TableSet)],
) -> Result<(), sqlx::Error> {
    let mut rows = Rows::default();
    for (key, entries, tables) in resources {
        if tables.is_empty() {
            continue;
        }
        let resource_key = keys::resource_key(tenant, key.resource_type, key.id);
        for entry in *entries {
            if let Some(row) = Row::of(entry)
                && tables.contains(row.table())
            {
                rows.add(tenant, *key, resource_key, &entry.code, row);
            }
        }
    }
    // Every statement but the reference one starts with these six columns,
    // bound in this order.
    const COMMON: &str = "tenant, resource_type, id, code, param_key, resource_key";
    const COMMON_ARRAYS: &str = "$2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[]";
    fn bind_common<'q>(
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        tenant: &'q str,
        columns: &'q Columns,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(tenant)
            .bind(&columns.resource_type)
            .bind(&columns.id)
            .bind(&columns.code)
            .bind(&columns.param_key)
            .bind(&columns.resource_key)
    }
    if !rows.string.0.id.is_empty() {
        let (c, norm, exact, whole_norm, whole_exact) = &rows.string;
        bind_common(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO idx_string ({COMMON}, value_norm, value_exact, whole_norm, whole_exact) \
                 SELECT $1, u.* FROM unnest({COMMON_ARRAYS}, $7::text[], $8::text[], $9::text[], $10::text[]) AS u"
            ))),
            tenant,
            c,
        )
        .bind(norm)
        .bind(exact)
        .bind(whole_norm)
        .bind(whole_exact)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.token.0.id.is_empty() {
        let (c, system, value) = &rows.token;
        bind_common(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO idx_token ({COMMON}, system, value) \
                 SELECT $1, u.* FROM unnest({COMMON_ARRAYS}, $7::text[], $8::text[]) AS u"
            ))),
            tenant,
            c,
        )
        .bind(system)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.date.0.id.is_empty() {
        let (c, low, high) = &rows.date;
        bind_common(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO idx_date ({COMMON}, low, high) \
                 SELECT $1, u.* FROM unnest({COMMON_ARRAYS}, $7::timestamptz[], $8::timestamptz[]) AS u"
            ))),
            tenant,
            c,
        )
        .bind(low)
        .bind(high)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.number.0.id.is_empty() {
        let (c, value, low, high) = &rows.number;
        bind_common(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO idx_number ({COMMON}, value, low, high) \
                 SELECT $1, u.* FROM unnest({COMMON_ARRAYS}, $7::numeric[], $8::numeric[], $9::numeric[]) AS u"
            ))),
            tenant,
            c,
        )
        .bind(value)
        .bind(low)
        .bind(high)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.quantity.columns.id.is_empty() {
        let q = &rows.quantity;
        bind_common(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO idx_quantity ({COMMON}, value, low, high, system, unit_code, unit) \
                 SELECT $1, u.* FROM unnest({COMMON_ARRAYS}, $7::numeric[], $8::numeric[], $9::numeric[], \
                   $10::text[], $11::text[], $12::text[]) AS u"
            ))),
            tenant,
            &q.columns,
        )
        .bind(&q.value)
        .bind(&q.low)
        .bind(&q.high)
        .bind(&q.system)
        .bind(&q.unit_code)
        .bind(&q.unit)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.reference.0.id.is_empty() {
        let (c, target_type, target_id, url, target_key) = &rows.reference;
        sqlx::query(
            "INSERT INTO idx_reference (tenant, resource_type, id, code, resource_key, \
               target_type, target_id, url, target_key) \
             SELECT $1, u.* FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], \
               $6::text[], $7::text[], $8::text[], $9::bigint[]) AS u",
        )
        .bind(tenant)
        .bind(&c.resource_type)
        .bind(&c.id)
        .bind(&c.code)
        .bind(&c.resource_key)
        .bind(target_type)
        .bind(target_id)
        .bind(url)
        .bind(target_key)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.uri.0.id.is_empty() {
        let (c, value) = &rows.uri;
        bind_common(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO idx_uri ({COMMON}, value) \
                 SELECT $1, u.* FROM unnest({COMMON_ARRAYS}, $7::text[]) AS u"
            ))),
            tenant,
            c,
        )
        .bind(value)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Deletes index rows of resources of mixed types, each from its own set
/// of tables: one statement per type and table.
pub async fn clear_keys(
    conn: &mut PgConnection,
    keys: &[(ResourceKey<'_>, TableSet)],
) -> Result<(), sqlx::Error> {
    let mut groups: std::collections::BTreeMap<(&str, usize), Vec<String>> =
        std::collections::BTreeMap::new();
    for (key, tables) in keys {
        for table in 0..INDEX_TABLES.len() {
            if tables.contains(table) {
                groups
                    .entry((key.resource_type, table))
                    .or_default()
                    .push(key.id.to_owned());
            }
        }
    }
    for ((resource_type, table), ids) in groups {
        clear_table(conn, table, resource_type, &ids).await?;
    }
    Ok(())
}

/// The statement that resolves conditional references by identifier, with
/// a condition on the pending rows' `url` spliced in.
macro_rules! resolve_statement {
    ($url_filter:literal) => {
        concat!(
            "WITH pending AS ( \
               SELECT DISTINCT url FROM idx_reference \
               WHERE tenant = current_setting('infoctor.tenant') AND target_id IS NULL ",
            $url_filter,
            " AND url ~ '^[A-Z][A-Za-z]*[?]identifier=[^&]+$' \
             ), criteria AS ( \
               SELECT url, split_part(url, '?', 1) AS target_type, \
                 substr(url, strpos(url, '=') + 1) AS criterion \
               FROM pending \
             ), parsed AS ( \
               SELECT url, target_type, strpos(criterion, '|') > 0 AS has_system, \
                 nullif(split_part(criterion, '|', 1), '') AS system, \
                 CASE WHEN strpos(criterion, '|') > 0 \
                   THEN substr(criterion, strpos(criterion, '|') + 1) ELSE criterion END AS value \
               FROM criteria \
             ), matched AS ( \
               SELECT p.url, p.target_type, min(t.id) AS target_id \
               FROM parsed p \
               JOIN idx_token t \
                 ON t.param_key = idx_param_key(current_setting('infoctor.tenant'), p.target_type, 'identifier') \
                AND t.tenant = current_setting('infoctor.tenant') \
                AND t.resource_type = p.target_type AND t.code = 'identifier' AND t.value = p.value \
                AND (NOT p.has_system OR t.system IS NOT DISTINCT FROM p.system) \
               GROUP BY p.url, p.target_type \
               HAVING count(DISTINCT t.id) = 1 \
             ) \
             UPDATE idx_reference r \
             SET target_type = m.target_type, target_id = m.target_id, url = NULL, \
               target_key = idx_target_key(r.tenant, m.target_id) \
             FROM matched m \
             WHERE r.tenant = current_setting('infoctor.tenant') AND r.target_id IS NULL AND r.url = m.url"
        )
    };
}

/// Points references of the form `Type?identifier=system|value` at the one
/// resource of that type with that identifier, and returns how many index
/// rows changed. Bulk Data exports write such conditional references (Synthea
/// names practitioners, organizations and locations this way), and their
/// targets often arrive in a later file than the resources that name them.
///
/// Only the index rows change: the stored resource keeps the reference as
/// written, and searches, `_include` and `_revinclude` follow the resolved
/// target. A criterion that matches no resource or several stays unresolved
/// and is tried again at the next call. The form `identifier=value` matches
/// any system, and `identifier=|value` only values without one.
///
/// NOTE: only this one criterion is understood, without percent-decoding or
/// the `\|` escape of token searches. Other conditional references stay
/// text. A reference resolved once keeps its target until the resource that
/// makes it is written again, even if a later resource shares the identifier.
pub async fn resolve_conditional_references(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(resolve_statement!(""))
        .execute(&mut *conn)
        .await?;
    Ok(result.rows_affected())
}

/// Resolves the conditional references that a write of one resource with
/// these index entries can settle: the resource's own, and those that name
/// it by one of its identifiers. Returns how many index rows changed. The
/// criteria are looked up by their text, so the statement reads only the
/// unresolved rows that carry them.
pub async fn resolve_references_of_write(
    conn: &mut PgConnection,
    resource_type: &str,
    entries: &[IndexEntry],
) -> Result<u64, sqlx::Error> {
    let urls = criteria_of_write(resource_type, entries);
    if urls.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(resolve_statement!("AND url = ANY($1)"))
        .bind(&urls)
        .execute(&mut *conn)
        .await?;
    Ok(result.rows_affected())
}

/// Lists the criteria texts a write can resolve: the resource's own
/// unresolved `identifier=` references, and each way another resource can
/// name it by identifier (with its system, and without any).
fn criteria_of_write(resource_type: &str, entries: &[IndexEntry]) -> Vec<String> {
    let mut urls = Vec::new();
    for entry in entries {
        match &entry.value {
            IndexValue::Reference {
                target_id: None,
                url,
                ..
            } if url.contains("?identifier=") => urls.push(cut(url)),
            IndexValue::Token {
                system,
                code: Some(value),
                ..
            } if entry.code == "identifier" => {
                urls.push(format!("{resource_type}?identifier={value}"));
                urls.push(format!(
                    "{resource_type}?identifier={}|{value}",
                    system.as_deref().unwrap_or("")
                ));
            }
            _ => {}
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries(status: &str, value: f64) -> Vec<IndexEntry> {
        infoctor_fhir::search::extract(&json!({
            "resourceType": "Observation",
            "id": "o1",
            "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-05",
            "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "%"}
        }))
        .expect("extract")
    }

    fn tables(set: TableSet) -> Vec<&'static str> {
        (0..INDEX_TABLES.len())
            .filter(|&table| set.contains(table))
            .map(|table| INDEX_TABLES[table])
            .collect()
    }

    #[test]
    fn digests_follow_the_rows_of_each_table() {
        let final_7 = digests(&entries("final", 7.0));
        assert_eq!(final_7, digests(&entries("final", 7.0)));
        let amended_7 = digests(&entries("amended", 7.0));
        let changed = plan(Some(&final_7), &amended_7);
        assert_eq!(tables(changed.clear), ["idx_token"]);
        assert_eq!(tables(changed.insert), ["idx_token"]);
        // Another value changes the quantity rows alone.
        let final_75 = digests(&entries("final", 7.5));
        assert_eq!(
            tables(plan(Some(&final_7), &final_75).clear),
            ["idx_quantity"]
        );
        assert_eq!(final_7[0], 0, "an Observation has no string parameter here");
        assert_ne!(final_7[1], 0);
    }

    #[test]
    fn plans_cover_new_unknown_and_emptied_rows() {
        let new = digests(&entries("final", 7.0));
        let created = plan(Some(&NO_ROWS), &new);
        assert!(created.clear.is_empty());
        assert_eq!(created.insert, {
            let mut set = TableSet::NONE;
            for (table, digest) in new.iter().enumerate() {
                if *digest != 0 {
                    set = set.with(table);
                }
            }
            set
        });
        let unknown = plan(None, &new);
        assert_eq!(unknown.clear, TableSet::ALL);
        assert_eq!(unknown.insert, created.insert);
        let malformed = plan(Some(&[1, 2]), &new);
        assert_eq!(malformed, unknown);
        let emptied = plan(Some(&new), &NO_ROWS);
        assert_eq!(emptied.clear, created.insert);
        assert!(emptied.insert.is_empty());
        assert_eq!(plan(Some(&new), &new).clear, TableSet::NONE);
    }

    #[test]
    fn long_values_digest_as_stored() {
        let long = "x".repeat(MAX_INDEXED_BYTES + 10);
        let longer = "x".repeat(MAX_INDEXED_BYTES + 20);
        let string = |text: &str| IndexEntry {
            code: "name".into(),
            value: IndexValue::String {
                normalized: text.to_owned(),
                exact: text.to_owned(),
            },
        };
        let token = |text: &str| IndexEntry {
            code: "code".into(),
            value: IndexValue::Token {
                system: None,
                code: Some(text.to_owned()),
                display: None,
            },
        };
        // String rows keep long values whole, so the stored rows differ.
        assert_ne!(digests(&[string(&long)]), digests(&[string(&longer)]));
        // Token values are cut to the same stored text, so the rows are equal.
        assert_eq!(digests(&[token(&long)]), digests(&[token(&longer)]));
    }
}
