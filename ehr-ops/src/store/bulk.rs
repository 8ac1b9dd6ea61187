//! Batched writes for the bulk loader.
//!
//! A batch is written in the caller's tenant-scoped transaction with a few
//! array statements, under the same row-level security as single writes.
//! The rows are inserted from unnested arrays rather than with COPY, because
//! PostgreSQL refuses COPY into tables with row-level security. Loading content
//! equal to the current version adds no version, so reloading a file is a
//! no-op.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use infoctor_fhir::search::IndexEntry;
use sqlx::PgConnection;

use super::index::{self, Digests, IndexPlan, ResourceKey, TableSet};
use super::keys;
use super::{PreparedResource, now_millis, stamp_meta};
use crate::error::{FhirError, FhirResult};

/// Version, deleted flag, content hash and index digests of a stored resource.
type CurrentState = (i64, bool, Option<Vec<u8>>, Option<Vec<i64>>);

/// A row of `resources` as the batch reads it: type, id, then the state.
type CurrentRow = (String, String, i64, bool, Option<Vec<u8>>, Option<Vec<i64>>);

/// Counts of what a batch wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Resources that did not exist (or were deleted) before.
    pub created: usize,
    /// Resources whose content changed.
    pub updated: usize,
    /// Resources whose content equalled the current version.
    pub unchanged: usize,
}

/// Writes a batch of prepared resources in a transaction scoped to
/// `tenant`. The batch is borrowed, so a caller whose transaction failed
/// can run it again.
pub async fn write_batch(
    conn: &mut PgConnection,
    tenant: &str,
    batch: &[&PreparedResource],
) -> FhirResult<BatchCounts> {
    // A key that occurs several times is written once per occurrence, in
    // order, as if the batch had been cut before each repeat. A load
    // therefore stores the same versions whatever its batch size.
    let mut rounds: Vec<Vec<&PreparedResource>> = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::with_capacity(batch.len());
    for &prepared in batch {
        let occurrence = seen
            .entry((prepared.resource_type.as_str(), prepared.id.as_str()))
            .or_insert(0);
        if rounds.len() <= *occurrence {
            rounds.push(Vec::new());
        }
        rounds[*occurrence].push(prepared);
        *occurrence += 1;
    }
    let mut counts = BatchCounts::default();
    for round in rounds {
        let round_counts = write_unique(conn, tenant, round).await?;
        counts.created += round_counts.created;
        counts.updated += round_counts.updated;
        counts.unchanged += round_counts.unchanged;
    }
    Ok(counts)
}

/// Writes a batch in which every key occurs once.
async fn write_unique(
    conn: &mut PgConnection,
    tenant: &str,
    batch: Vec<&PreparedResource>,
) -> FhirResult<BatchCounts> {
    let mut counts = BatchCounts::default();
    let latest: HashMap<(String, String), &PreparedResource> = batch
        .into_iter()
        .map(|prepared| {
            (
                (prepared.resource_type.clone(), prepared.id.clone()),
                prepared,
            )
        })
        .collect();

    let entries: Vec<((String, String), &PreparedResource, Digests)> = latest
        .into_iter()
        .map(|(key, prepared)| {
            let digests = index::digests(&prepared.entries);
            (key, prepared, digests)
        })
        .collect();
    let keys: Vec<&(String, String)> = entries.iter().map(|(key, ..)| key).collect();
    let mut current = lookup(conn, &keys).await?;

    // New keys are claimed before anything else is written. Their rows go in
    // with `ON CONFLICT DO NOTHING`, which waits for a concurrent writer of
    // the same key (another load, or the API) to finish. A key that writer
    // committed first is read again, locked, and written as its next
    // version. Keys go in sorted order, so two batches that claim the same
    // new keys wait for them in the same order instead of deadlocking.
    let claimed_at = now_millis();
    let mut unclaimed: Vec<&((String, String), &PreparedResource, Digests)> = entries
        .iter()
        .filter(|(key, ..)| !current.contains_key(key))
        .collect();
    unclaimed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut claim = ResourceRows::default();
    let mut claim_keys = Vec::with_capacity(unclaimed.len());
    for (_, prepared, digests) in unclaimed {
        claim_keys.push(keys::resource_key(
            tenant,
            &prepared.resource_type,
            &prepared.id,
        ));
        let instant = prepared
            .first_version
            .as_ref()
            .map_or(claimed_at, |(instant, _)| *instant);
        claim.push(prepared, 1, instant, digests);
    }
    if !claim.id.is_empty() {
        let inserted: std::collections::HashSet<(String, String)> = claim
            .bind(sqlx::query_as(
                "INSERT INTO resources (tenant, resource_type, id, version_id, last_updated, deleted, content_hash, \
                   index_digests, resource_key) \
                 SELECT $13, k.resource_type, k.id, k.version_id, k.last_updated, false, k.hash, \
                   ARRAY[k.d0, k.d1, k.d2, k.d3, k.d4, k.d5, k.d6], k.resource_key \
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bytea[], \
                   $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], \
                   $14::bigint[]) \
                   AS k(resource_type, id, version_id, last_updated, hash, d0, d1, d2, d3, d4, d5, d6, resource_key) \
                 ON CONFLICT (tenant, resource_type, id) DO NOTHING \
                 RETURNING resource_type, id",
            ))
            .bind(tenant)
            .bind(&claim_keys)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        let lost: Vec<&(String, String)> = keys
            .iter()
            .copied()
            .filter(|key| !current.contains_key(*key) && !inserted.contains(*key))
            .collect();
        if !lost.is_empty() {
            tracing::debug!(
                keys = lost.len(),
                "resources created by a concurrent writer, writing them as updates"
            );
            let found = lookup(conn, &lost).await?;
            if let Some(missing) = lost.iter().find(|key| !found.contains_key(**key)) {
                return Err(FhirError::Internal(format!(
                    "{}/{} was neither stored nor free to create. Run the load again",
                    missing.0, missing.1
                )));
            }
            current.extend(found);
        }
    }

    // The claim may have waited for another writer's version of a key, so
    // versions that follow a stored one are stamped after the claim. Their
    // `lastUpdated` is then never earlier than that of the version before.
    let updated_at = now_millis();
    let mut rows = VersionRows::default();
    let mut updated = ResourceRows::default();
    let mut written: Vec<(&PreparedResource, IndexPlan)> = Vec::new();
    for (key, prepared, digests) in entries {
        let (version_id, operation, plan) = match current.get(&key) {
            None => (1, "create", index::plan(Some(&index::NO_ROWS), &digests)),
            Some((_, false, Some(hash), _)) if *hash == prepared.hash => {
                counts.unchanged += 1;
                continue;
            }
            Some((version, deleted, _, stored)) => (
                version + 1,
                if *deleted { "create" } else { "update" },
                index::plan(stored.as_deref(), &digests),
            ),
        };
        if operation == "create" {
            counts.created += 1;
        } else {
            counts.updated += 1;
        }
        let stamp = if current.contains_key(&key) {
            updated_at
        } else {
            claimed_at
        };
        let (instant, text) = match &prepared.first_version {
            Some((instant, text)) if version_id == 1 => (*instant, text.clone()),
            _ => {
                let mut resource = prepared.to_resource()?;
                stamp_meta(&mut resource, version_id, stamp);
                let text = serde_json::to_string(&resource)
                    .map_err(|err| FhirError::Internal(format!("serializing resource: {err}")))?;
                (stamp, text)
            }
        };
        if current.contains_key(&key) {
            updated.push(prepared, version_id, instant, &digests);
        }
        rows.push(prepared, version_id, operation, text, instant);
        written.push((prepared, plan));
    }
    if written.is_empty() {
        return Ok(counts);
    }

    if !updated.id.is_empty() {
        // `RETURNING` lets this statement share the binding of the claim.
        let _: Vec<(i64,)> = updated
            .bind(sqlx::query_as(
                "UPDATE resources r SET version_id = k.version_id, last_updated = k.last_updated, deleted = false, \
                   content_hash = k.hash, index_digests = ARRAY[k.d0, k.d1, k.d2, k.d3, k.d4, k.d5, k.d6] \
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bytea[], \
                   $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[]) \
                   AS k(resource_type, id, version_id, last_updated, hash, d0, d1, d2, d3, d4, d5, d6) \
                 WHERE r.tenant = current_setting('infoctor.tenant') \
                   AND r.resource_type = k.resource_type AND r.id = k.id \
                 RETURNING r.version_id",
            ))
            .fetch_all(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO resource_versions (tenant, resource_type, id, version_id, last_updated, operation, resource) \
         SELECT current_setting('infoctor.tenant'), k.resource_type, k.id, k.version_id, k.last_updated, \
           k.operation, k.body::jsonb \
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[]) \
           AS k(resource_type, id, version_id, last_updated, operation, body)",
    )
    .bind(&rows.resource_type)
    .bind(&rows.id)
    .bind(&rows.version_id)
    .bind(&rows.last_updated)
    .bind(&rows.operation)
    .bind(&rows.body)
    .execute(&mut *conn)
    .await?;
    fn key(prepared: &PreparedResource) -> ResourceKey<'_> {
        ResourceKey {
            resource_type: &prepared.resource_type,
            id: &prepared.id,
        }
    }
    let cleared: Vec<(ResourceKey<'_>, TableSet)> = written
        .iter()
        .map(|(prepared, plan)| (key(prepared), plan.clear))
        .collect();
    index::clear_keys(conn, &cleared).await?;
    let keyed: Vec<(ResourceKey<'_>, &[IndexEntry], TableSet)> = written
        .iter()
        .map(|(prepared, plan)| (key(prepared), prepared.entries.as_slice(), plan.insert))
        .collect();
    index::insert(conn, tenant, &keyed).await?;
    Ok(counts)
}

/// Reads and locks the stored state of the given keys. One query per
/// resource type, `id = ANY(...)`, so each is an index scan on the primary
/// key. Rows are locked in key order to avoid deadlocks with concurrent
/// writers.
async fn lookup(
    conn: &mut PgConnection,
    keys: &[&(String, String)],
) -> FhirResult<HashMap<(String, String), CurrentState>> {
    let mut by_type: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (resource_type, id) in keys {
        by_type
            .entry(resource_type.as_str())
            .or_default()
            .push(id.as_str());
    }
    let mut current = HashMap::with_capacity(keys.len());
    for (resource_type, ids) in by_type {
        let rows: Vec<CurrentRow> = sqlx::query_as(
            "SELECT resource_type, id, version_id, deleted, content_hash, index_digests FROM resources \
             WHERE tenant = current_setting('infoctor.tenant') AND resource_type = $1 AND id = ANY($2) \
             ORDER BY id FOR UPDATE",
        )
        .bind(resource_type)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        current.extend(
            rows.into_iter()
                .map(|(rt, id, version, deleted, hash, digests)| {
                    ((rt, id), (version, deleted, hash, digests))
                }),
        );
    }
    Ok(current)
}

/// Columns of `resource_versions` rows.
#[derive(Default)]
struct VersionRows {
    resource_type: Vec<String>,
    id: Vec<String>,
    version_id: Vec<i64>,
    operation: Vec<String>,
    body: Vec<String>,
    last_updated: Vec<DateTime<Utc>>,
}

impl VersionRows {
    fn push(
        &mut self,
        prepared: &PreparedResource,
        version_id: i64,
        operation: &str,
        body: String,
        last_updated: DateTime<Utc>,
    ) {
        self.resource_type.push(prepared.resource_type.clone());
        self.id.push(prepared.id.clone());
        self.version_id.push(version_id);
        self.operation.push(operation.to_owned());
        self.body.push(body);
        self.last_updated.push(last_updated);
    }
}

/// Columns of `resources` rows: type, id, version, last updated, hash and
/// one index digest per index table.
#[derive(Default)]
struct ResourceRows {
    resource_type: Vec<String>,
    id: Vec<String>,
    version_id: Vec<i64>,
    last_updated: Vec<DateTime<Utc>>,
    hash: Vec<Vec<u8>>,
    digests: [Vec<i64>; 7],
}

impl ResourceRows {
    fn push(
        &mut self,
        prepared: &PreparedResource,
        version_id: i64,
        last_updated: DateTime<Utc>,
        digests: &Digests,
    ) {
        self.resource_type.push(prepared.resource_type.clone());
        self.id.push(prepared.id.clone());
        self.version_id.push(version_id);
        self.last_updated.push(last_updated);
        self.hash.push(prepared.hash.clone());
        for (column, digest) in self.digests.iter_mut().zip(digests) {
            column.push(*digest);
        }
    }

    /// Binds the columns in the order the statements on `resources` read
    /// them: type, id, version, last updated, hash and the seven digests.
    fn bind<'q, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        let query = query
            .bind(&self.resource_type)
            .bind(&self.id)
            .bind(&self.version_id)
            .bind(&self.last_updated)
            .bind(&self.hash);
        self.digests
            .iter()
            .fold(query, |query, column| query.bind(column))
    }
}
