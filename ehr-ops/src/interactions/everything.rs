//! `Patient/{id}/$everything`: the patient, every resource in the patient's
//! compartment (per the R4 Patient CompartmentDefinition), and the
//! practitioners, organizations, locations, medications and devices those
//! resources reference.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::search::{Bundle, search_entry};
use super::{Call, FhirResponse};
use crate::error::{FhirError, FhirResult};
use crate::store;

/// Upper bound on resources in one `$everything` response.
// NOTE: larger records are cut at this bound with a warning entry; paging
// through `$everything` is not implemented.
pub const MAX_EVERYTHING: usize = 20_000;

/// Types outside the Patient compartment that `$everything` follows
/// references to.
const REFERENCED_TYPES: [&str; 7] = [
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
    "Device",
    "Substance",
];

/// Runs `$everything` for one patient.
pub async fn everything(
    conn: &mut PgConnection,
    call: &Call,
    patient_id: &str,
    pairs: &[(String, String)],
) -> FhirResult<FhirResponse> {
    let mut since: Option<DateTime<Utc>> = None;
    let mut types: Option<Vec<String>> = None;
    for (name, value) in pairs {
        match name.as_str() {
            "_since" => {
                since = Some(
                    infoctor_fhir::datetime::DateRange::parse(value)
                        .map_err(|err| {
                            FhirError::invalid(format!("invalid _since: {err}"), Some("_since"))
                        })?
                        .low,
                );
            }
            "_type" => types = Some(value.split(',').map(str::to_owned).collect()),
            "_format" | "_pretty" => {}
            other => {
                return Err(FhirError::invalid(
                    format!("unknown $everything parameter '{other}'; use _since or _type"),
                    Some(other),
                ));
            }
        }
    }
    let patient = store::read(conn, "Patient", patient_id).await?;

    let (source_types, codes): (Vec<String>, Vec<String>) = infoctor_fhir::model::Model::r4()
        .resource_types()
        .iter()
        .flat_map(|resource_type| {
            infoctor_fhir::search::compartment_params(resource_type)
                .iter()
                .filter_map(move |code| {
                    compartment_rows(resource_type, code).map(|code| (resource_type.clone(), code))
                })
        })
        .unzip();
    let mut keys: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT x.resource_type, x.id FROM idx_reference x \
         JOIN unnest($2::text[], $3::text[]) AS c(resource_type, code) \
           ON x.resource_type = c.resource_type AND x.code = c.code \
         WHERE x.target_key = idx_target_key(current_setting('infoctor.tenant'), $1) \
           AND x.tenant = current_setting('infoctor.tenant') AND x.target_type = 'Patient' \
           AND x.target_id = $1 AND x.resource_type <> 'Patient' \
         ORDER BY 1, 2 LIMIT $4",
    )
    .bind(patient_id)
    .bind(&source_types)
    .bind(&codes)
    .bind(MAX_EVERYTHING as i64 + 1)
    .fetch_all(&mut *conn)
    .await?;
    // The patient is part of its own compartment, so its references
    // (managingOrganization, generalPractitioner) are followed too.
    let (key_types, key_ids): (Vec<String>, Vec<String>) = keys
        .iter()
        .cloned()
        .chain(std::iter::once((
            "Patient".to_owned(),
            patient_id.to_owned(),
        )))
        .unzip();
    let referenced_types: Vec<String> = REFERENCED_TYPES.iter().map(|t| (*t).to_owned()).collect();
    let referenced: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT x.target_type, x.target_id FROM idx_reference x \
         JOIN unnest($1::text[], $2::text[]) AS k(resource_type, id) \
           ON x.resource_type = k.resource_type AND x.id = k.id \
         WHERE x.resource_key = ANY(ARRAY( \
             SELECT idx_resource_key(current_setting('infoctor.tenant'), t, i) \
             FROM unnest($1::text[], $2::text[]) AS u(t, i))) \
           AND x.tenant = current_setting('infoctor.tenant') AND x.target_type = ANY($3) \
           AND x.target_id IS NOT NULL",
    )
    .bind(&key_types)
    .bind(&key_ids)
    .bind(&referenced_types)
    .fetch_all(&mut *conn)
    .await?;
    let mut seen: HashSet<(String, String)> = keys.iter().cloned().collect();
    keys.extend(
        referenced
            .into_iter()
            .filter(|key| seen.insert(key.clone())),
    );
    let truncated = keys.len() > MAX_EVERYTHING;
    keys.truncate(MAX_EVERYTHING);
    if let Some(types) = &types {
        keys.retain(|(resource_type, _)| types.contains(resource_type));
    }

    let mut resources = store::read_many(conn, &keys).await?;
    resources.sort_by(|a, b| (&a.resource_type, &a.id).cmp(&(&b.resource_type, &b.id)));
    if let Some(since) = since {
        resources.retain(|stored| stored.last_updated >= since);
    }
    let mut bundle = Bundle::new("searchset");
    let include_patient = types
        .as_ref()
        .is_none_or(|types| types.iter().any(|t| t == "Patient"))
        && since.is_none_or(|since| patient.last_updated >= since);
    let mut entries = Vec::with_capacity(resources.len() + 1);
    if include_patient {
        entries.push(search_entry(call, patient, "match"));
    }
    entries.extend(
        resources
            .into_iter()
            .map(|stored| search_entry(call, stored, "match")),
    );
    bundle.total = Some(entries.len() as i64);
    bundle.link.push(serde_json::json!({
        "relation": "self",
        "url": format!("{}/Patient/{patient_id}/$everything", call.base),
    }));
    bundle.entry = entries;
    if truncated {
        tracing::warn!(
            request_id = %call.context.request_id,
            tenant = %call.context.tenant,
            limit = MAX_EVERYTHING,
            "$everything cut at its limit"
        );
    }
    bundle.into_response()
}

/// Returns the code of the index rows that contain a compartment
/// parameter's references to patients. A parameter with a typed base finds
/// them in its base parameter's rows, and has none when its type is not
/// Patient.
fn compartment_rows(resource_type: &str, code: &str) -> Option<String> {
    match infoctor_fhir::search::SearchParamRegistry::r4()
        .get(resource_type, code)
        .and_then(|def| def.typed_base())
    {
        Some((base, "Patient")) => Some(base.to_owned()),
        Some(_) => None,
        None => Some(code.to_owned()),
    }
}
