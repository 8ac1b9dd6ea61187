//! Persists the search index rows extracted from a resource.
//!
//! Rows for many resources go to PostgreSQL in one statement per index table
//! (arrays unnested on the server), so a bulk load of a thousand resources
//! costs a handful of round trips rather than one per value.

use infoctor_fhir::search::{IndexEntry, IndexValue};
use rust_decimal::Decimal;
use sqlx::PgConnection;

/// Maximum text stored in an index row, in bytes. PostgreSQL's B-tree rows
/// cannot exceed about 2.7 kB, so longer values are cut at a character
/// boundary, and searches cut their values the same way.
// NOTE: two values that agree on their first 1,024 bytes match each other.
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

/// The key of one resource whose index rows are written.
#[derive(Debug, Clone, Copy)]
pub struct ResourceKey<'a> {
    /// Resource type.
    pub resource_type: &'a str,
    /// Resource id.
    pub id: &'a str,
}

#[derive(Default)]
struct Columns {
    resource_type: Vec<String>,
    id: Vec<String>,
    code: Vec<String>,
}

impl Columns {
    fn push(&mut self, key: ResourceKey<'_>, code: &str) {
        self.resource_type.push(key.resource_type.to_owned());
        self.id.push(key.id.to_owned());
        self.code.push(code.to_owned());
    }
}

type Texts = Vec<String>;
type OptionalTexts = Vec<Option<String>>;
type Instants = Vec<chrono::DateTime<chrono::Utc>>;
type Decimals = Vec<Decimal>;

#[derive(Default)]
struct Rows {
    string: (Columns, Texts, Texts),
    token: (Columns, OptionalTexts, OptionalTexts),
    date: (Columns, Instants, Instants),
    number: (Columns, Decimals, Decimals, Decimals),
    quantity: QuantityRows,
    reference: (Columns, OptionalTexts, OptionalTexts, OptionalTexts),
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
    fn add(&mut self, key: ResourceKey<'_>, entry: &IndexEntry) {
        let code = entry.code;
        match &entry.value {
            IndexValue::String { normalized, exact } => {
                self.string.0.push(key, code);
                self.string.1.push(cut(normalized));
                self.string.2.push(cut(exact));
            }
            // A token with neither system nor code (a CodeableConcept's bare
            // text) can match no token search, so it is not stored.
            IndexValue::Token {
                system: None,
                code: None,
                ..
            } => {}
            IndexValue::Token {
                system,
                code: value,
                ..
            } => {
                self.token.0.push(key, code);
                self.token.1.push(cut_optional(system));
                self.token.2.push(cut_optional(value));
            }
            IndexValue::Date { low, high } => {
                // A Period whose end precedes its start breaks FHIR's per-1
                // rule. It is stored as the span between the two instants,
                // because PostgreSQL cannot build a range that ends first.
                let (low, high) = if low <= high {
                    (low, high)
                } else {
                    (high, low)
                };
                self.date.0.push(key, code);
                self.date.1.push(*low);
                self.date.2.push(*high);
            }
            IndexValue::Number { value, low, high } => {
                self.number.0.push(key, code);
                self.number.1.push(*value);
                self.number.2.push(*low);
                self.number.3.push(*high);
            }
            IndexValue::Quantity {
                value,
                low,
                high,
                system,
                code: unit_code,
                unit,
            } => {
                let rows = &mut self.quantity;
                rows.columns.push(key, code);
                rows.value.push(*value);
                rows.low.push(*low);
                rows.high.push(*high);
                rows.system.push(cut_optional(system));
                rows.unit_code.push(cut_optional(unit_code));
                rows.unit.push(cut_optional(unit));
            }
            IndexValue::Reference {
                target_type,
                target_id,
                url,
            } => {
                self.reference.0.push(key, code);
                self.reference.1.push(target_type.clone());
                self.reference.2.push(cut_optional(target_id));
                self.reference.3.push(if target_id.is_some() {
                    None
                } else {
                    Some(cut(url))
                });
            }
            IndexValue::Uri { value } => {
                self.uri.0.push(key, code);
                self.uri.1.push(cut(value));
            }
        }
    }
}

/// The index tables, for deleting a resource's rows.
const INDEX_TABLES: [&str; 7] = [
    "idx_string",
    "idx_token",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_reference",
    "idx_uri",
];

/// Deletes every index row of the given resources (all of one type).
pub async fn clear(
    conn: &mut PgConnection,
    resource_type: &str,
    ids: &[String],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    for table in INDEX_TABLES {
        let statement = format!(
            "DELETE FROM {table} WHERE tenant = current_setting('infoctor.tenant') \
             AND resource_type = $1 AND id = ANY($2)"
        );
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(resource_type)
            .bind(ids)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Inserts the index rows of many resources.
pub async fn insert(
    conn: &mut PgConnection,
    resources: &[(ResourceKey<'_>, &[IndexEntry])],
) -> Result<(), sqlx::Error> {
    let mut rows = Rows::default();
    for (key, entries) in resources {
        for entry in *entries {
            rows.add(*key, entry);
        }
    }
    // The tenant is read once per statement from a materialized CTE rather
    // than once per row.
    const TENANT: &str = "(SELECT tenant FROM t)";
    const WITH_TENANT: &str =
        "WITH t AS MATERIALIZED (SELECT current_setting('infoctor.tenant') AS tenant) ";
    if !rows.string.0.id.is_empty() {
        let (c, norm, exact) = &rows.string;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WITH_TENANT}INSERT INTO idx_string (tenant, resource_type, id, code, value_norm, value_exact) \
             SELECT {TENANT}, u.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u"
        )))
        .bind(&c.resource_type)
        .bind(&c.id)
        .bind(&c.code)
        .bind(norm)
        .bind(exact)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.token.0.id.is_empty() {
        let (c, system, value) = &rows.token;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WITH_TENANT}INSERT INTO idx_token (tenant, resource_type, id, code, system, value) \
             SELECT {TENANT}, u.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u"
        )))
        .bind(&c.resource_type)
        .bind(&c.id)
        .bind(&c.code)
        .bind(system)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.date.0.id.is_empty() {
        let (c, low, high) = &rows.date;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WITH_TENANT}INSERT INTO idx_date (tenant, resource_type, id, code, low, high) \
             SELECT {TENANT}, u.* FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[]) AS u"
        )))
        .bind(&c.resource_type)
        .bind(&c.id)
        .bind(&c.code)
        .bind(low)
        .bind(high)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.number.0.id.is_empty() {
        let (c, value, low, high) = &rows.number;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WITH_TENANT}INSERT INTO idx_number (tenant, resource_type, id, code, value, low, high) \
             SELECT {TENANT}, u.* FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::numeric[], $6::numeric[]) AS u"
        )))
        .bind(&c.resource_type)
        .bind(&c.id)
        .bind(&c.code)
        .bind(value)
        .bind(low)
        .bind(high)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.quantity.columns.id.is_empty() {
        let q = &rows.quantity;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WITH_TENANT}INSERT INTO idx_quantity (tenant, resource_type, id, code, value, low, high, system, unit_code, unit) \
             SELECT {TENANT}, u.* FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::numeric[], \
             $6::numeric[], $7::text[], $8::text[], $9::text[]) AS u"
        )))
        .bind(&q.columns.resource_type)
        .bind(&q.columns.id)
        .bind(&q.columns.code)
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
        let (c, target_type, target_id, url) = &rows.reference;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WITH_TENANT}INSERT INTO idx_reference (tenant, resource_type, id, code, target_type, target_id, url) \
             SELECT {TENANT}, u.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u"
        )))
        .bind(&c.resource_type)
        .bind(&c.id)
        .bind(&c.code)
        .bind(target_type)
        .bind(target_id)
        .bind(url)
        .execute(&mut *conn)
        .await?;
    }
    if !rows.uri.0.id.is_empty() {
        let (c, value) = &rows.uri;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WITH_TENANT}INSERT INTO idx_uri (tenant, resource_type, id, code, value) \
             SELECT {TENANT}, u.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u"
        )))
        .bind(&c.resource_type)
        .bind(&c.id)
        .bind(&c.code)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Deletes every index row of resources of mixed types, given as parallel
/// arrays of types and ids.
pub async fn clear_keys(
    conn: &mut PgConnection,
    resource_types: &[String],
    ids: &[String],
) -> Result<(), sqlx::Error> {
    let mut by_type: std::collections::BTreeMap<&str, Vec<String>> =
        std::collections::BTreeMap::new();
    for (resource_type, id) in resource_types.iter().zip(ids) {
        by_type
            .entry(resource_type.as_str())
            .or_default()
            .push(id.clone());
    }
    for (resource_type, ids) in by_type {
        clear(conn, resource_type, &ids).await?;
    }
    Ok(())
}
