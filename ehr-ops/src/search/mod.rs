//! FHIR search: parameters parsed into filters, filters run as SQL over the
//! index tables, results paged with keyset cursors.
//!
//! Keyset paging keeps `next` and `previous` links consistent while others
//! write: a page starts strictly after (or before) the sort values of the
//! last row the client saw, so inserts and deletes elsewhere neither repeat
//! nor skip rows that existed on both reads. The tie-break is always the
//! resource id.

pub mod params;
pub mod sql;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::error::{FhirError, FhirResult};
use crate::store::{self, StoredResource};
pub use params::{SearchRequest, Summary};

/// Upper bound on resources added by `_include` and `_revinclude` per page.
// NOTE: includes past this bound are dropped and the response carries a warning.
pub const MAX_INCLUDED: usize = 1000;

/// A page of search results.
#[derive(Debug, Default)]
pub struct SearchPage {
    /// Matching resources in sort order.
    pub matches: Vec<StoredResource>,
    /// Resources added by `_include` / `_revinclude`.
    pub included: Vec<StoredResource>,
    /// Number of matches (not counting included resources), when requested.
    pub total: Option<i64>,
    /// Cursor for the next page.
    pub next: Option<String>,
    /// Cursor for the previous page.
    pub previous: Option<String>,
    /// True when includes were cut at [`MAX_INCLUDED`].
    pub includes_truncated: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// "n" for forward, "p" for backward.
    d: String,
    /// Sort values of the boundary row, as PostgreSQL text.
    v: Vec<String>,
}

impl Cursor {
    fn encode(&self) -> String {
        hex::encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(text: &str) -> FhirResult<Cursor> {
        hex::decode(text)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| {
                FhirError::invalid(
                    format!("invalid _cursor '{text}'; use the next or previous link of a searchset as given"),
                    Some("_cursor"),
                )
            })
    }
}

struct SortColumn {
    expression: String,
    cast: &'static str,
    descending: bool,
}

fn sort_columns(request: &SearchRequest) -> Vec<SortColumn> {
    let mut columns: Vec<SortColumn> = request
        .sort
        .iter()
        .filter(|key| key.code != "_id")
        .map(|key| {
            let (expression, cast) = sql::sort_expression("r", key);
            SortColumn {
                expression,
                cast,
                descending: key.descending,
            }
        })
        .collect();
    let id_descending = request
        .sort
        .iter()
        .find(|key| key.code == "_id")
        .is_some_and(|key| key.descending);
    columns.push(SortColumn {
        expression: "r.id".to_owned(),
        cast: "text",
        descending: id_descending,
    });
    columns
}

/// Tells whether the search reads the resources table (a `_lastUpdated`
/// sort or filter) rather than only index rows.
fn needs_resource_row(request: &SearchRequest) -> bool {
    request.sort.iter().any(|key| key.code == "_lastUpdated")
        || request
            .filters
            .iter()
            .any(|filter| filter.code == "_lastUpdated")
}

fn push_base(qb: &mut QueryBuilder<Postgres>, request: &SearchRequest) {
    sql::push_from_and_filters(
        qb,
        &request.resource_type,
        &request.filters,
        needs_resource_row(request),
    );
}

/// Counts the resources matching the request's filters.
pub async fn count(conn: &mut PgConnection, request: &SearchRequest) -> FhirResult<i64> {
    let mut qb = QueryBuilder::new("SELECT count(*)");
    push_base(&mut qb, request);
    Ok(qb.build_query_scalar().fetch_one(&mut *conn).await?)
}

/// Returns up to `limit` ids matching the request's filters, in id order.
pub async fn matching_ids(
    conn: &mut PgConnection,
    request: &SearchRequest,
    limit: i64,
) -> FhirResult<Vec<String>> {
    let mut qb = QueryBuilder::new("SELECT r.id");
    push_base(&mut qb, request);
    qb.push(" ORDER BY r.id LIMIT ");
    qb.push_bind(limit);
    Ok(qb.build_query_scalar().fetch_all(&mut *conn).await?)
}

/// Runs a search and returns one page.
pub async fn search(conn: &mut PgConnection, request: &SearchRequest) -> FhirResult<SearchPage> {
    let mut page = SearchPage::default();
    let wants_total = request.total || request.summary == Summary::Count;
    if request.summary == Summary::Count || request.count == 0 {
        if wants_total {
            page.total = Some(count(conn, request).await?);
        }
        return Ok(page);
    }
    // When the candidates come from an index lookup, the page query finds
    // every match before ordering them, so it counts them in the same pass.
    // Otherwise the count runs on its own and the page query can stop after
    // its first rows in key order.
    let total_in_page =
        wants_total && sql::has_driving_filter(&request.filters, needs_resource_row(request));
    if wants_total && !total_in_page {
        page.total = Some(count(conn, request).await?);
    }

    let columns = sort_columns(request);
    let cursor = request.cursor.as_deref().map(Cursor::decode).transpose()?;
    if let Some(cursor) = &cursor
        && cursor.v.len() != columns.len()
    {
        return Err(FhirError::invalid(
            "the _cursor does not fit this search's _sort; start again from the first page"
                .to_owned(),
            Some("_cursor"),
        ));
    }
    let backward = cursor.as_ref().is_some_and(|c| c.d == "p");

    // A newest-first date sort over candidates that no filter selects reads
    // the newest dates first and tries the resources that have them.
    let query = PageQuery {
        request,
        columns: &columns,
        cursor: cursor.as_ref(),
        backward,
        total_in_page,
    };
    let mut rows = None;
    if let Some((code, bound)) = newest_date_bound(conn, request, cursor.as_ref(), backward).await?
    {
        let newer = query.build(Some((code.as_str(), bound.as_str())));
        let found = fetch_page(conn, newer, cursor.is_some()).await?;
        // Fewer than `count + 1` rows means resources with older dates may
        // belong on the page.
        if found.len() as i64 > request.count {
            rows = Some(found);
        }
    }
    let rows = match rows {
        Some(rows) => rows,
        None => fetch_page(conn, query.build(None), cursor.is_some()).await?,
    };
    let first_value = if total_in_page { 2 } else { 1 };
    let mut keys: Vec<(String, Vec<String>)> = Vec::with_capacity(rows.len());
    for row in &rows {
        use sqlx::Row;
        let id: String = row.try_get(0)?;
        let mut values = Vec::with_capacity(columns.len());
        for n in 0..columns.len() {
            values.push(row.try_get::<String, _>(n + first_value)?);
        }
        keys.push((id, values));
    }
    if total_in_page {
        use sqlx::Row;
        page.total = Some(match rows.first() {
            Some(row) => row.try_get::<i64, _>(1)?,
            // Without a cursor an empty page means no match; past a cursor
            // the matches lie on other pages.
            None if cursor.is_none() => 0,
            None => count(conn, request).await?,
        });
    }
    let has_more = keys.len() as i64 > request.count;
    keys.truncate(request.count as usize);
    if backward {
        keys.reverse();
    }
    let boundary = |values: &Vec<String>, direction: &str| {
        Cursor {
            d: direction.to_owned(),
            v: values.clone(),
        }
        .encode()
    };
    if let (Some(first), Some(last)) = (keys.first(), keys.last()) {
        let more_after = if backward { true } else { has_more };
        let more_before = if backward { has_more } else { cursor.is_some() };
        if more_after {
            page.next = Some(boundary(&last.1, "n"));
        }
        if more_before {
            page.previous = Some(boundary(&first.1, "p"));
        }
    }

    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|(id, _)| (request.resource_type.clone(), id.clone()))
        .collect();
    let mut found: HashMap<String, StoredResource> = store::read_many(conn, &pairs)
        .await?
        .into_iter()
        .map(|stored| (stored.id.clone(), stored))
        .collect();
    page.matches = keys.iter().filter_map(|(id, _)| found.remove(id)).collect();
    add_includes(conn, request, &mut page).await?;
    Ok(page)
}

/// Date rows read per row of a page when looking for the newest dates.
const NEWEST_ROWS_PER_MATCH: i64 = 4;

/// Returns the row code of the date parameter that sorts the search newest
/// first, and the end of its `n`-th newest value, `n` being a few times the
/// page size. It applies when no filter selects the candidates from its
/// index rows.
///
/// Every resource sorted before that value has a value ending at or after
/// it. A page drawn from those resources is therefore the true page whenever
/// they fill it. Returns nothing when the search does not qualify or there
/// are fewer values.
async fn newest_date_bound(
    conn: &mut PgConnection,
    request: &SearchRequest,
    cursor: Option<&Cursor>,
    backward: bool,
) -> FhirResult<Option<(String, String)>> {
    let Some(key) = request.sort.first() else {
        return Ok(None);
    };
    let [code] = key.row_codes.as_slice() else {
        return Ok(None);
    };
    if key.kind != infoctor_fhir::search::SearchParamType::Date
        || !key.descending
        || key.code == "_lastUpdated"
        || backward
        || needs_resource_row(request)
        || sql::has_driving_filter(&request.filters, false)
    {
        return Ok(None);
    }
    let rows = (request.count + 1).saturating_mul(NEWEST_ROWS_PER_MATCH);
    let mut qb = QueryBuilder::new("");
    let before = cursor
        .and_then(|cursor| cursor.v.first())
        .map(String::as_str);
    sql::push_newest_dates(&mut qb, &request.resource_type, code, before);
    qb.push(" LIMIT 1 OFFSET ");
    qb.push_bind(rows - 1);
    let bound: Option<String> = qb
        .build_query_scalar()
        .fetch_optional(&mut *conn)
        .await
        .map_err(|err| cursor_error(err, cursor.is_some()))?;
    Ok(bound.map(|bound| (code.clone(), bound)))
}

/// The parts of a search that shape its page query.
struct PageQuery<'a> {
    request: &'a SearchRequest,
    columns: &'a [SortColumn],
    cursor: Option<&'a Cursor>,
    backward: bool,
    total_in_page: bool,
}

impl PageQuery<'_> {
    /// Builds the query of one page, with its sort values, and with the
    /// total when `total_in_page`. With `newer`, a date row code and a
    /// bound, the candidates are the resources with a value of that
    /// parameter ending at or after the bound.
    fn build(&self, newer: Option<(&str, &str)>) -> QueryBuilder<Postgres> {
        let mut qb = QueryBuilder::new(if self.total_in_page {
            "WITH m AS MATERIALIZED (SELECT r.id"
        } else {
            "WITH m AS (SELECT r.id"
        });
        for (n, column) in self.columns.iter().enumerate() {
            qb.push(format!(", {} AS s{n}", column.expression));
        }

        match newer {
            Some((code, bound)) => sql::push_from_newer_dates(
                &mut qb,
                &self.request.resource_type,
                code,
                bound,
                &self.request.filters,
            ),
            None => push_base(&mut qb, self.request),
        }

        qb.push(") SELECT q.id");
        if self.total_in_page {
            qb.push(", (SELECT count(*) FROM m)");
        }
        for n in 0..self.columns.len() {
            qb.push(format!(", q.s{n}::text"));
        }
        qb.push(" FROM m q WHERE true");
        if let Some(cursor) = self.cursor {
            push_keyset(&mut qb, self.columns, &cursor.v, self.backward);
        }

        qb.push(" ORDER BY ");
        for (n, column) in self.columns.iter().enumerate() {
            let descending = column.descending != self.backward;
            qb.push(format!(
                "{}q.s{n} {}",
                if n > 0 { ", " } else { "" },
                if descending { "DESC" } else { "ASC" }
            ));
        }
        qb.push(" LIMIT ");
        qb.push_bind(self.request.count + 1);
        qb
    }
}

/// Runs a page query.
async fn fetch_page(
    conn: &mut PgConnection,
    mut qb: QueryBuilder<Postgres>,
    has_cursor: bool,
) -> FhirResult<Vec<sqlx::postgres::PgRow>> {
    qb.build()
        .fetch_all(&mut *conn)
        .await
        .map_err(|err| cursor_error(err, has_cursor))
}

/// Maps a failed query to an invalid `_cursor` where the cursor caused it.
/// Cursor values are cast to their sort column's type, so a tampered or
/// foreign cursor fails that cast (SQLSTATE class 22, data exception).
fn cursor_error(err: sqlx::Error, has_cursor: bool) -> FhirError {
    let data_exception = err
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code.starts_with("22"));
    if data_exception && has_cursor {
        FhirError::invalid(
            "invalid _cursor: it does not belong to this search; start again from the first page"
                .to_owned(),
            Some("_cursor"),
        )
    } else {
        FhirError::Database(err)
    }
}

fn push_keyset(
    qb: &mut QueryBuilder<Postgres>,
    columns: &[SortColumn],
    values: &[String],
    backward: bool,
) {
    qb.push(" AND (");
    for j in 0..columns.len() {
        if j > 0 {
            qb.push(" OR ");
        }
        qb.push("(");
        for (k, column) in columns.iter().enumerate().take(j) {
            qb.push(format!("q.s{k} = "));
            qb.push_bind(values[k].clone());
            qb.push(format!("::{} AND ", column.cast));
        }
        let column = &columns[j];
        let greater = column.descending == backward;
        qb.push(format!("q.s{j} {} ", if greater { ">" } else { "<" }));
        qb.push_bind(values[j].clone());
        qb.push(format!("::{})", column.cast));
    }
    qb.push(")");
}

/// Returns the code of the rows that contain an include parameter's
/// relative references, and the target type those rows must have. A
/// parameter with a typed base gives its base and type, any other gives
/// itself and no type.
fn relative_rows(include: &params::Include) -> (&str, Option<&str>) {
    infoctor_fhir::search::SearchParamRegistry::r4()
        .get(&include.source_type, &include.code)
        .and_then(|def| def.typed_base())
        .map_or((include.code.as_str(), None), |(base, target)| {
            (base, Some(target))
        })
}

async fn add_includes(
    conn: &mut PgConnection,
    request: &SearchRequest,
    page: &mut SearchPage,
) -> FhirResult<()> {
    if page.matches.is_empty() || (request.includes.is_empty() && request.revincludes.is_empty()) {
        return Ok(());
    }
    let match_ids: Vec<String> = page.matches.iter().map(|m| m.id.clone()).collect();
    let mut wanted: Vec<(String, String)> = Vec::new();
    for include in &request.includes {
        if include.source_type != request.resource_type {
            continue;
        }
        let (code, typed) = relative_rows(include);
        let targets: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT target_type, target_id FROM idx_reference \
             WHERE resource_key = ANY(ARRAY( \
                 SELECT idx_resource_key(current_setting('infoctor.tenant'), $1, m) FROM unnest($3::text[]) AS m)) \
               AND tenant = current_setting('infoctor.tenant') AND resource_type = $1 AND code = $2 \
               AND id = ANY($3) AND target_type IS NOT NULL AND target_id IS NOT NULL \
               AND ($4::text IS NULL OR target_type = $4) \
               AND ($6::text IS NULL OR target_type = $6) LIMIT $5",
        )
        .bind(&include.source_type)
        .bind(code)
        .bind(&match_ids)
        .bind(&include.target_type)
        .bind(MAX_INCLUDED as i64 + 1)
        .bind(typed)
        .fetch_all(&mut *conn)
        .await?;
        wanted.extend(targets);
    }
    for include in &request.revincludes {
        if include
            .target_type
            .as_deref()
            .is_some_and(|target| target != request.resource_type)
        {
            continue;
        }
        let (code, typed) = relative_rows(include);
        if typed.is_some_and(|typed| typed != request.resource_type) {
            continue;
        }
        let sources: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT resource_type, id FROM idx_reference \
             WHERE target_key = ANY(ARRAY( \
                 SELECT idx_target_key(current_setting('infoctor.tenant'), m) FROM unnest($4::text[]) AS m)) \
               AND tenant = current_setting('infoctor.tenant') AND resource_type = $1 AND code = $2 \
               AND target_type = $3 AND target_id = ANY($4) LIMIT $5",
        )
        .bind(&include.source_type)
        .bind(code)
        .bind(&request.resource_type)
        .bind(&match_ids)
        .bind(MAX_INCLUDED as i64 + 1)
        .fetch_all(&mut *conn)
        .await?;
        wanted.extend(sources);
    }
    let matched: HashSet<(String, String)> = page
        .matches
        .iter()
        .map(|m| (m.resource_type.clone(), m.id.clone()))
        .collect();
    let mut seen = HashSet::new();
    wanted.retain(|key| !matched.contains(key) && seen.insert(key.clone()));
    if wanted.len() > MAX_INCLUDED {
        wanted.truncate(MAX_INCLUDED);
        page.includes_truncated = true;
    }
    let mut included = store::read_many(conn, &wanted).await?;
    included.sort_by(|a, b| (&a.resource_type, &a.id).cmp(&(&b.resource_type, &b.id)));
    page.included = included;
    Ok(())
}
