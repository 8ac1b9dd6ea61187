//! Rebuilds the search index rows of tenants written under older extraction
//! rules.
//!
//! Index rows come from this server's code, not from SQL, so a migration
//! cannot add the rows a newer rule extracts (composite parameters' pairs,
//! say). Each tenant records the rules its rows follow in
//! `tenants.index_rules`. When the pools open, every tenant behind
//! [`INDEX_RULES`] has the current version of each live resource extracted
//! again, and the tables whose digests differ are rewritten, exactly as an
//! update of that resource would rewrite them. Resources whose rows are
//! already right cost one extraction and no write.

use std::collections::BTreeMap;

use sqlx::{Acquire, PgConnection};

use super::index::{self, Digests, ResourceKey, TableSet};
use crate::postgres::Database;

/// The version of the extraction rules this server writes. Raise it when
/// extraction yields different rows for a resource already stored.
/// 1: composite parameters store the pairs of their two components.
/// 2: conjunctions store the pairs of each code's most specific form alone.
pub const INDEX_RULES: i32 = 2;

/// Resources read, extracted and rewritten in one transaction.
const BATCH: i64 = 500;

/// Serializes rebuilds of processes that open pools on one database at once.
const LOCK_KEY: &str = "infoctor.index_rules";

/// Counts of one rebuild.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReindexReport {
    /// Tenants brought to [`INDEX_RULES`].
    pub tenants: u64,
    /// Live resources whose rows were checked.
    pub checked: u64,
    /// Resources whose rows were rewritten in at least one table.
    pub rewritten: u64,
    /// Resources whose stored version no longer extracts; their rows are
    /// left as they were.
    pub failed: u64,
    /// Whether any resource's reference rows were rewritten.
    pub references_rewritten: bool,
}

/// Brings every tenant behind [`INDEX_RULES`] up to it. Other processes
/// that call this on the same database wait for the first to finish.
pub async fn reindex_stale_tenants(db: &Database) -> Result<ReindexReport, sqlx::Error> {
    let mut lock = db.admin_pool().acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(LOCK_KEY)
        .fetch_one(&mut *lock)
        .await?;
    if !locked {
        tracing::info!("waiting for another process to finish rebuilding index rows");
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .bind(LOCK_KEY)
            .execute(&mut *lock)
            .await?;
    }
    let result = reindex_locked(db).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(LOCK_KEY)
        .execute(&mut *lock)
        .await;
    if let Err(err) = unlocked {
        // Closing the connection releases the lock as well.
        tracing::warn!(error = %err, "releasing the index rebuild lock failed");
        drop(lock.detach());
    }
    result
}

async fn reindex_locked(db: &Database) -> Result<ReindexReport, sqlx::Error> {
    let stale: Vec<String> =
        sqlx::query_scalar("SELECT tenant FROM tenants WHERE index_rules < $1 ORDER BY tenant")
            .bind(INDEX_RULES)
            .fetch_all(db.admin_pool())
            .await?;
    let mut report = ReindexReport::default();
    for tenant in stale {
        tracing::info!(
            tenant = %tenant,
            rules = INDEX_RULES,
            "rebuilding index rows under newer extraction rules"
        );
        let tenant_report = reindex_tenant(db, &tenant).await?;
        if tenant_report.references_rewritten {
            // Rewritten reference rows are back in the form the resource
            // writes them, so the conditional ones among them resolve again.
            crate::load::resolve_references(db, &tenant).await;
        }
        sqlx::query("UPDATE tenants SET index_rules = $1 WHERE tenant = $2")
            .bind(INDEX_RULES)
            .bind(&tenant)
            .execute(db.admin_pool())
            .await?;
        tracing::info!(
            tenant = %tenant,
            checked = tenant_report.checked,
            rewritten = tenant_report.rewritten,
            failed = tenant_report.failed,
            "index rows rebuilt"
        );
        report.tenants += 1;
        report.checked += tenant_report.checked;
        report.rewritten += tenant_report.rewritten;
        report.failed += tenant_report.failed;
        report.references_rewritten |= tenant_report.references_rewritten;
    }
    Ok(report)
}

/// One live resource as the rebuild reads it.
type CurrentRow = (String, String, Option<Vec<i64>>, String);

async fn reindex_tenant(db: &Database, tenant: &str) -> Result<ReindexReport, sqlx::Error> {
    let mut report = ReindexReport::default();
    let mut after = (String::new(), String::new());
    loop {
        let mut tx = db.begin_tenant(tenant).await?;
        // Locking the pointers keeps writers of these resources waiting
        // until the batch's rows and digests are in.
        let rows: Vec<CurrentRow> = sqlx::query_as(
            "SELECT r.resource_type, r.id, r.index_digests, v.resource::text \
             FROM resources r JOIN resource_versions v ON v.tenant = r.tenant \
               AND v.resource_type = r.resource_type AND v.id = r.id AND v.version_id = r.version_id \
             WHERE r.tenant = current_setting('infoctor.tenant') AND NOT r.deleted \
               AND (r.resource_type, r.id) > ($1, $2) \
             ORDER BY r.resource_type, r.id LIMIT $3 FOR UPDATE OF r",
        )
        .bind(&after.0)
        .bind(&after.1)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            tx.commit().await?;
            return Ok(report);
        };
        after = (last.0.clone(), last.1.clone());
        report.checked += rows.len() as u64;
        let conn = tx.acquire().await?;
        let batch = rebuild_batch(conn, tenant, &rows).await?;
        report.rewritten += batch.rewritten;
        report.failed += batch.failed;
        report.references_rewritten |= batch.references_rewritten;
        tx.commit().await?;
    }
}

/// One resource whose rows differ from what the current rules extract.
struct Changed {
    resource_type: String,
    id: String,
    entries: Vec<infoctor_fhir::search::IndexEntry>,
    digests: Digests,
    clear: TableSet,
    insert: TableSet,
}

async fn rebuild_batch(
    conn: &mut PgConnection,
    tenant: &str,
    rows: &[CurrentRow],
) -> Result<ReindexReport, sqlx::Error> {
    let mut report = ReindexReport::default();
    let mut changed: Vec<Changed> = Vec::new();
    for (resource_type, id, stored, text) in rows {
        let entries = serde_json::from_str(text)
            .map_err(|err| err.to_string())
            .and_then(|resource| {
                infoctor_fhir::search::extract(&resource).map_err(|err| err.to_string())
            });
        let entries = match entries {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(
                    tenant = %tenant,
                    resource_type = %resource_type,
                    id = %id,
                    error = %error,
                    "stored resource no longer extracts; its index rows are kept"
                );
                report.failed += 1;
                continue;
            }
        };
        let digests = index::digests(&entries);
        let plan = index::plan(stored.as_deref(), &digests);
        if plan.clear.is_empty() && plan.insert.is_empty() {
            continue;
        }
        changed.push(Changed {
            resource_type: resource_type.clone(),
            id: id.clone(),
            entries,
            digests,
            clear: plan.clear,
            insert: plan.insert,
        });
    }
    report.rewritten = changed.len() as u64;
    let references = index::INDEX_TABLES
        .iter()
        .position(|table| *table == "idx_reference")
        .unwrap_or(usize::MAX);

    // Each type's resources have the union of their tables cleared in one
    // statement per table, so each gets back its rows in every table of
    // that union, beside the tables its own plan fills.
    let mut by_type: BTreeMap<&str, Vec<&Changed>> = BTreeMap::new();
    for resource in &changed {
        by_type
            .entry(resource.resource_type.as_str())
            .or_default()
            .push(resource);
    }
    for (resource_type, resources) in by_type {
        let cleared = resources
            .iter()
            .fold(TableSet::NONE, |set, resource| set.union(resource.clear));
        report.references_rewritten |= cleared.contains(references)
            || resources
                .iter()
                .any(|resource| resource.insert.contains(references));
        let ids: Vec<String> = resources.iter().map(|r| r.id.clone()).collect();
        index::clear(conn, resource_type, &ids, cleared).await?;
        let inserts: Vec<(
            ResourceKey<'_>,
            &[infoctor_fhir::search::IndexEntry],
            TableSet,
        )> = resources
            .iter()
            .map(|resource| {
                let refill = cleared.intersect(index::nonempty_tables(&resource.digests));
                (
                    ResourceKey {
                        resource_type,
                        id: &resource.id,
                    },
                    resource.entries.as_slice(),
                    resource.insert.union(refill),
                )
            })
            .collect();
        index::insert(conn, tenant, &inserts).await?;
    }
    if !changed.is_empty() {
        let types: Vec<&str> = changed.iter().map(|r| r.resource_type.as_str()).collect();
        let ids: Vec<&str> = changed.iter().map(|r| r.id.as_str()).collect();
        // A bigint[][] must be rectangular, and every digest list has seven.
        let digests: Vec<i64> = changed.iter().flat_map(|r| r.digests).collect();
        sqlx::query(
            "UPDATE resources r SET index_digests = d.digests \
             FROM (SELECT u.resource_type, u.id, \
                     ($3::bigint[])[(u.n - 1) * 7 + 1 : u.n * 7] AS digests \
                   FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(resource_type, id, n)) d \
             WHERE r.tenant = current_setting('infoctor.tenant') \
               AND r.resource_type = d.resource_type AND r.id = d.id",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&digests)
        .execute(&mut *conn)
        .await?;
    }
    Ok(report)
}
