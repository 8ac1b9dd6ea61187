//! Proposals drawn by models from clinical notes, and their review.
//!
//! A proposal names a problem, an allergy or a medication that a model found
//! in a note, with the words that support it. It is stored in the
//! `proposals` table, apart from the FHIR resources, so no search, history,
//! `$everything`, change capture or lakehouse table reads it. A clinician
//! lists proposals, accepts one (optionally editing its code, clinical status
//! or note), which writes a Condition (category `problem-list-item`),
//! AllergyIntolerance or MedicationStatement and a Provenance pointing at the
//! note version in one transaction, or rejects one with a reason that is
//! kept for evaluation.
//!
//! This module knows nothing about the models: callers hand it drafts.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{FhirError, FhirResult};
use crate::interactions::{Call, ReturnPreference, create};
use crate::search;
use crate::store::{self, format_instant};

/// Kind of record entry a proposal would add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalKind {
    /// A Condition on the problem list.
    Problem,
    /// An AllergyIntolerance.
    Allergy,
    /// A MedicationStatement.
    Medication,
}

impl ProposalKind {
    /// Returns the name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalKind::Problem => "problem",
            ProposalKind::Allergy => "allergy",
            ProposalKind::Medication => "medication",
        }
    }

    fn parse(text: &str) -> Option<ProposalKind> {
        match text {
            "problem" => Some(ProposalKind::Problem),
            "allergy" => Some(ProposalKind::Allergy),
            "medication" => Some(ProposalKind::Medication),
            _ => None,
        }
    }

    /// Returns the FHIR resource type an acceptance creates.
    pub fn resource_type(self) -> &'static str {
        match self {
            ProposalKind::Problem => "Condition",
            ProposalKind::Allergy => "AllergyIntolerance",
            ProposalKind::Medication => "MedicationStatement",
        }
    }
}

/// Review state of a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    Pending,
    Accepted,
    Rejected,
}

impl ProposalStatus {
    fn as_str(self) -> &'static str {
        match self {
            ProposalStatus::Pending => "pending",
            ProposalStatus::Accepted => "accepted",
            ProposalStatus::Rejected => "rejected",
        }
    }

    /// Parses a status name as used in the `status` query parameter.
    pub fn parse(text: &str) -> Option<ProposalStatus> {
        match text {
            "pending" => Some(ProposalStatus::Pending),
            "accepted" => Some(ProposalStatus::Accepted),
            "rejected" => Some(ProposalStatus::Rejected),
            _ => None,
        }
    }
}

/// A code from a terminology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coding {
    pub system: String,
    pub code: String,
    pub display: String,
}

/// Words of the note that support a proposal: byte offsets into the decoded
/// text of the note's attachment number `attachment` (its index in
/// `DocumentReference.content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub attachment: usize,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// A proposal as a model drafts it, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftProposal {
    pub kind: ProposalKind,
    /// Codings the matched words name, the primary one first; never empty.
    pub codings: Vec<Coding>,
    pub spans: Vec<Span>,
    /// Context attributes of the supporting mentions, as the model reports
    /// them.
    pub attributes: Value,
}

/// The model, its version and the terminology behind a set of drafts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    pub model: String,
    pub model_version: String,
    pub terminology: String,
}

/// A note: a DocumentReference version, its patient and encounter, and the
/// text of each attachment that carries inline plain text.
#[derive(Debug, Clone)]
pub struct Note {
    pub id: String,
    pub version: i64,
    pub patient_id: String,
    pub encounter_id: Option<String>,
    /// Decoded text per `content` entry; `None` where an entry has no inline
    /// plain text.
    pub attachments: Vec<Option<String>>,
}

/// A stored proposal.
#[derive(Debug, Clone, Serialize)]
pub struct Proposal {
    pub id: Uuid,
    pub kind: ProposalKind,
    pub status: ProposalStatus,
    pub patient: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// `DocumentReference/{id}/_history/{version}`.
    pub note: String,
    pub codings: Vec<Coding>,
    pub spans: Vec<Span>,
    pub attributes: Value,
    pub model: String,
    pub model_version: String,
    pub terminology: String,
    pub created_at: String,
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `Type/id` of the resource an acceptance created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `Provenance/id` written with the acceptance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
    #[serde(skip)]
    patient_id: String,
    #[serde(skip)]
    note_id: String,
    #[serde(skip)]
    note_version: i64,
}

/// Result of storing a note's drafts.
#[derive(Debug, Clone, Serialize)]
pub struct SaveOutcome {
    /// Every proposal of the note version, new and earlier ones.
    pub proposals: Vec<Proposal>,
    /// Drafts stored now.
    pub created: usize,
    /// Drafts already stored for this note version.
    pub unchanged: usize,
    /// Drafts whose code the patient's record already holds.
    pub already_recorded: usize,
    /// Drafts whose code already waits for review from another note or
    /// note version of the patient.
    pub already_proposed: usize,
}

/// Filters of [`list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub patient: Option<String>,
    pub status: Option<ProposalStatus>,
    pub kind: Option<ProposalKind>,
    /// A DocumentReference id.
    pub note: Option<String>,
    /// A version of that DocumentReference.
    pub note_version: Option<i64>,
    /// At most this many, newest first.
    pub limit: i64,
    /// Only proposals listed after this one: its creation time and id.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// Clinician's changes made while accepting.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Acceptance {
    /// Replaces the proposed coding.
    pub code: Option<Coding>,
    /// Clinical status of the Condition or AllergyIntolerance, or the status
    /// of the MedicationStatement; `active` when absent.
    pub clinical_status: Option<String>,
    /// A free-text annotation for the created resource.
    pub note: Option<String>,
}

const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const ALLERGY_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
const CONDITION_STATUSES: &[&str] = &[
    "active",
    "recurrence",
    "relapse",
    "inactive",
    "remission",
    "resolved",
];
const ALLERGY_STATUSES: &[&str] = &["active", "inactive", "resolved"];
const MEDICATION_STATUSES: &[&str] = &[
    "active",
    "completed",
    "intended",
    "stopped",
    "on-hold",
    "unknown",
    "not-taken",
];

/// Reads the current version of a DocumentReference and decodes its inline
/// plain-text attachments. The note must name a patient as its subject.
pub async fn read_note(conn: &mut PgConnection, id: &str) -> FhirResult<Note> {
    let stored = store::read(conn, "DocumentReference", id).await?;
    let body = store::parse_body(&stored)?;
    let patient_id = body
        .pointer("/subject/reference")
        .and_then(Value::as_str)
        .and_then(|reference| reference.strip_prefix("Patient/"))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| {
            FhirError::invalid(
                format!(
                    "DocumentReference/{id} has no subject of the form Patient/{{id}}; \
                     proposals belong to a patient"
                ),
                Some("DocumentReference.subject"),
            )
        })?
        .to_owned();
    if body.get("status").and_then(Value::as_str) == Some("entered-in-error") {
        return Err(FhirError::invalid(
            format!("DocumentReference/{id} is entered-in-error; its text is not read"),
            Some("DocumentReference.status"),
        ));
    }
    match store::read(conn, "Patient", &patient_id).await {
        Ok(_) => {}
        Err(FhirError::NotFound { .. } | FhirError::Gone { .. }) => {
            return Err(FhirError::invalid(
                format!(
                    "the subject of DocumentReference/{id}, Patient/{patient_id}, does not \
                     exist; correct the note's subject first"
                ),
                Some("DocumentReference.subject"),
            ));
        }
        Err(err) => return Err(err),
    }
    let encounter_id = body
        .pointer("/context/encounter/0/reference")
        .and_then(Value::as_str)
        .and_then(|reference| reference.strip_prefix("Encounter/"))
        .map(str::to_owned);
    let attachments = body
        .get("content")
        .and_then(Value::as_array)
        .map(|content| content.iter().map(attachment_text).collect())
        .unwrap_or_default();
    Ok(Note {
        id: stored.id,
        version: stored.version_id,
        patient_id,
        encounter_id,
        attachments,
    })
}

/// Decodes `content[i].attachment.data` when the attachment is plain text
/// (or has no content type) and its bytes are UTF-8.
fn attachment_text(content: &Value) -> Option<String> {
    let attachment = content.get("attachment")?;
    let plain = match attachment.get("contentType").and_then(Value::as_str) {
        None => true,
        Some(content_type) => content_type
            .split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/plain")),
    };
    if !plain {
        return None;
    }
    let data = attachment.get("data")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Stores a note's drafts as pending proposals and returns every proposal of
/// that note version. Storing the same drafts again adds nothing. A draft
/// whose primary code is already in the patient's record (a Condition,
/// AllergyIntolerance, MedicationRequest or MedicationStatement with that
/// code) is not stored.
pub async fn save(
    conn: &mut PgConnection,
    call: &Call,
    note: &Note,
    model: &ModelInfo,
    drafts: Vec<DraftProposal>,
) -> FhirResult<SaveOutcome> {
    let mut created = 0;
    let mut unchanged = 0;
    let mut already_recorded = 0;
    let mut already_proposed = 0;
    for draft in drafts {
        let Some(primary) = draft.codings.first() else {
            continue;
        };
        if is_recorded(conn, draft.kind, &note.patient_id, primary).await? {
            already_recorded += 1;
            continue;
        }
        if is_pending_elsewhere(conn, draft.kind, note, primary).await? {
            already_proposed += 1;
            continue;
        }
        let inserted = sqlx::query(
            "INSERT INTO proposals (tenant, id, kind, patient_id, encounter_id, note_id, \
                 note_version, code_system, code, display, codings, spans, attributes, model, \
                 model_version, terminology, created_by) \
             VALUES (current_setting('infoctor.tenant'), $1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (tenant, note_id, note_version, kind, code_system, code) DO NOTHING",
        )
        .bind(Uuid::new_v4())
        .bind(draft.kind.as_str())
        .bind(&note.patient_id)
        .bind(&note.encounter_id)
        .bind(&note.id)
        .bind(note.version)
        .bind(&primary.system)
        .bind(&primary.code)
        .bind(&primary.display)
        .bind(json!(draft.codings))
        .bind(json!(draft.spans))
        .bind(&draft.attributes)
        .bind(&model.model)
        .bind(&model.model_version)
        .bind(&model.terminology)
        .bind(&call.context.user)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            created += 1;
        } else {
            unchanged += 1;
        }
    }
    let proposals = list(
        conn,
        &ListFilter {
            note: Some(note.id.clone()),
            limit: i64::MAX,
            ..ListFilter::default()
        },
    )
    .await?
    .into_iter()
    .filter(|proposal| {
        proposal
            .note
            .ends_with(&format!("/_history/{}", note.version))
    })
    .collect();
    tracing::info!(
        request_id = %call.context.request_id,
        tenant = %call.context.tenant,
        note = %note.id,
        version = note.version,
        created,
        unchanged,
        already_recorded,
        already_proposed,
        "stored note proposals"
    );
    Ok(SaveOutcome {
        proposals,
        created,
        unchanged,
        already_recorded,
        already_proposed,
    })
}

/// Checks whether a pending proposal of the patient names the same concept
/// from another note or note version.
async fn is_pending_elsewhere(
    conn: &mut PgConnection,
    kind: ProposalKind,
    note: &Note,
    coding: &Coding,
) -> FhirResult<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM proposals \
             WHERE tenant = current_setting('infoctor.tenant') AND patient_id = $1 \
               AND status = 'pending' AND kind = $2 AND code_system = $3 AND code = $4 \
               AND NOT (note_id = $5 AND note_version = $6))",
    )
    .bind(&note.patient_id)
    .bind(kind.as_str())
    .bind(&coding.system)
    .bind(&coding.code)
    .bind(&note.id)
    .bind(note.version)
    .fetch_one(&mut *conn)
    .await?)
}

/// Checks whether the patient's record contains a live resource of the kind
/// with this code, using the search indexes.
async fn is_recorded(
    conn: &mut PgConnection,
    kind: ProposalKind,
    patient_id: &str,
    coding: &Coding,
) -> FhirResult<bool> {
    let types: &[&str] = match kind {
        ProposalKind::Problem => &["Condition"],
        ProposalKind::Allergy => &["AllergyIntolerance"],
        ProposalKind::Medication => &["MedicationStatement", "MedicationRequest"],
    };
    for resource_type in types {
        let pairs = vec![
            ("patient".to_owned(), format!("Patient/{patient_id}")),
            (
                "code".to_owned(),
                format!("{}|{}", coding.system, coding.code),
            ),
        ];
        let request = search::params::parse(resource_type, &pairs)?;
        if !search::matching_ids(conn, &request, 1).await?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[derive(sqlx::FromRow)]
struct ProposalRow {
    id: Uuid,
    kind: String,
    status: String,
    patient_id: String,
    encounter_id: Option<String>,
    note_id: String,
    note_version: i64,
    codings: Value,
    spans: Value,
    attributes: Value,
    model: String,
    model_version: String,
    terminology: String,
    created_at: DateTime<Utc>,
    created_by: String,
    decided_at: Option<DateTime<Utc>>,
    decided_by: Option<String>,
    reason: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    provenance_id: Option<String>,
}

const PROPOSAL_COLUMNS: &str = "id, kind, status, patient_id, encounter_id, note_id, note_version, \
     codings, spans, attributes, model, model_version, terminology, created_at, created_by, \
     decided_at, decided_by, reason, resource_type, resource_id, provenance_id";

fn proposal_from_row(row: ProposalRow) -> FhirResult<Proposal> {
    let ProposalRow {
        id,
        kind,
        status,
        patient_id,
        encounter_id,
        note_id,
        note_version,
        codings,
        spans,
        attributes,
        model,
        model_version,
        terminology,
        created_at,
        created_by,
        decided_at,
        decided_by,
        reason,
        resource_type,
        resource_id,
        provenance_id,
    } = row;
    let corrupt = |what: &str| FhirError::Internal(format!("proposal {id} has an invalid {what}"));
    Ok(Proposal {
        id,
        kind: ProposalKind::parse(&kind).ok_or_else(|| corrupt("kind"))?,
        status: ProposalStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        patient: format!("Patient/{patient_id}"),
        encounter: encounter_id.map(|id| format!("Encounter/{id}")),
        note: format!("DocumentReference/{note_id}/_history/{note_version}"),
        patient_id,
        note_id,
        note_version,
        codings: serde_json::from_value(codings).map_err(|_| corrupt("codings"))?,
        spans: serde_json::from_value(spans).map_err(|_| corrupt("spans"))?,
        attributes,
        model,
        model_version,
        terminology,
        created_at: format_instant(created_at),
        created_by,
        decided_at: decided_at.map(format_instant),
        decided_by,
        reason,
        resource: resource_type
            .zip(resource_id)
            .map(|(t, id)| format!("{t}/{id}")),
        provenance: provenance_id.map(|id| format!("Provenance/{id}")),
    })
}

/// Rejects text with a NUL character, which PostgreSQL cannot store.
pub fn reject_nul(field: &str, value: &str) -> FhirResult<()> {
    if value.contains('\0') {
        return Err(FhirError::invalid(
            format!("{field} contains a NUL character; remove it"),
            Some(field),
        ));
    }
    Ok(())
}

/// Position of the next page of a proposal list: the creation time and id
/// of the last proposal listed.
pub type ListCursor = (DateTime<Utc>, Uuid);

/// Lists proposals, newest first.
pub async fn list(conn: &mut PgConnection, filter: &ListFilter) -> FhirResult<Vec<Proposal>> {
    list_rows(conn, filter)
        .await?
        .into_iter()
        .map(proposal_from_row)
        .collect()
}

/// Lists one page of proposals, newest first, and the cursor of the next
/// page when more match.
pub async fn list_page(
    conn: &mut PgConnection,
    filter: &ListFilter,
) -> FhirResult<(Vec<Proposal>, Option<ListCursor>)> {
    let limit = filter.limit.max(0);
    let mut rows = list_rows(
        conn,
        &ListFilter {
            limit: limit.saturating_add(1),
            ..filter.clone()
        },
    )
    .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|row| (row.created_at, row.id))
    } else {
        None
    };
    let proposals = rows
        .into_iter()
        .map(proposal_from_row)
        .collect::<FhirResult<Vec<_>>>()?;
    Ok((proposals, next))
}

async fn list_rows(conn: &mut PgConnection, filter: &ListFilter) -> FhirResult<Vec<ProposalRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals \
         WHERE tenant = current_setting('infoctor.tenant') \
           AND ($1::text IS NULL OR patient_id = $1) \
           AND ($2::text IS NULL OR status = $2) \
           AND ($3::text IS NULL OR kind = $3) \
           AND ($4::text IS NULL OR note_id = $4) \
           AND ($5::bigint IS NULL OR note_version = $5) \
           AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8)) \
         ORDER BY created_at DESC, id DESC LIMIT $6"
    )))
    .bind(&filter.patient)
    .bind(filter.status.map(ProposalStatus::as_str))
    .bind(filter.kind.map(ProposalKind::as_str))
    .bind(&filter.note)
    .bind(filter.note_version)
    .bind(filter.limit.max(0))
    .bind(filter.after.map(|(created, _)| created))
    .bind(filter.after.map(|(_, id)| id))
    .fetch_all(&mut *conn)
    .await?)
}

/// Counts the proposals that match a filter, ignoring its limit.
pub async fn count(conn: &mut PgConnection, filter: &ListFilter) -> FhirResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM proposals \
         WHERE tenant = current_setting('infoctor.tenant') \
           AND ($1::text IS NULL OR patient_id = $1) \
           AND ($2::text IS NULL OR status = $2) \
           AND ($3::text IS NULL OR kind = $3) \
           AND ($4::text IS NULL OR note_id = $4) \
           AND ($5::bigint IS NULL OR note_version = $5)",
    )
    .bind(&filter.patient)
    .bind(filter.status.map(ProposalStatus::as_str))
    .bind(filter.kind.map(ProposalKind::as_str))
    .bind(&filter.note)
    .bind(filter.note_version)
    .fetch_one(&mut *conn)
    .await?)
}

/// Reads one proposal; `lock` takes a row lock for a decision.
async fn fetch(conn: &mut PgConnection, id: &str, lock: bool) -> FhirResult<Proposal> {
    let not_found = || FhirError::NotFound {
        resource_type: "proposal".to_owned(),
        id: id.to_owned(),
    };
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    let row: Option<ProposalRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals \
         WHERE tenant = current_setting('infoctor.tenant') AND id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    )))
    .bind(uuid)
    .fetch_optional(&mut *conn)
    .await?;
    proposal_from_row(row.ok_or_else(not_found)?)
}

/// Reads one proposal.
pub async fn get(conn: &mut PgConnection, id: &str) -> FhirResult<Proposal> {
    fetch(conn, id, false).await
}

fn ensure_pending(proposal: &Proposal) -> FhirResult<()> {
    if proposal.status == ProposalStatus::Pending {
        return Ok(());
    }
    Err(FhirError::Conflict(format!(
        "proposal {} was already {} by {}; a decision is final, so extract the note again \
         after it changes",
        proposal.id,
        proposal.status.as_str(),
        proposal.decided_by.as_deref().unwrap_or("unknown"),
    )))
}

/// Fails with a conflict when the proposal's note changed, was deleted or
/// entered in error, or now names another patient, or when the patient is
/// gone: the evidence no longer supports the proposal as stored.
async fn ensure_note_unchanged(conn: &mut PgConnection, proposal: &Proposal) -> FhirResult<()> {
    let note = match read_note(conn, &proposal.note_id).await {
        Ok(note) => note,
        Err(FhirError::Gone { .. } | FhirError::NotFound { .. }) => {
            return Err(FhirError::Conflict(format!(
                "DocumentReference/{} was deleted; its proposals can only be rejected",
                proposal.note_id
            )));
        }
        Err(FhirError::Invalid(issues)) => {
            return Err(FhirError::Conflict(format!(
                "DocumentReference/{} can no longer support proposals: {}; reject this one",
                proposal.note_id,
                issues
                    .iter()
                    .map(|issue| issue.diagnostics.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        Err(err) => return Err(err),
    };
    if note.version != proposal.note_version {
        return Err(FhirError::Conflict(format!(
            "DocumentReference/{} changed to version {} after this proposal was drawn from \
             version {}; extract the note again and review the new proposals",
            note.id, note.version, proposal.note_version
        )));
    }
    if note.patient_id != proposal.patient_id {
        return Err(FhirError::Conflict(format!(
            "DocumentReference/{} now names Patient/{}, not {}; extract it again",
            note.id, note.patient_id, proposal.patient
        )));
    }
    Ok(())
}

/// Accepts a pending proposal: writes the resource and a Provenance that
/// points at the note version, and marks the proposal accepted. The caller
/// commits, so all three happen or none.
pub async fn accept(
    conn: &mut PgConnection,
    call: &Call,
    id: &str,
    acceptance: Acceptance,
) -> FhirResult<Proposal> {
    let proposal = fetch(conn, id, true).await?;
    ensure_pending(&proposal)?;
    ensure_note_unchanged(conn, &proposal).await?;
    for text in [
        acceptance.clinical_status.as_deref(),
        acceptance.note.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        reject_nul("acceptance", text)?;
    }
    let resource = build_resource(&proposal, &acceptance)?;
    let coding = acceptance
        .code
        .clone()
        .or_else(|| proposal.codings.first().cloned())
        .ok_or_else(|| FhirError::Internal(format!("proposal {} has no coding", proposal.id)))?;
    if is_recorded(conn, proposal.kind, &proposal.patient_id, &coding).await? {
        return Err(FhirError::Conflict(format!(
            "{} already has a {} with code {}|{}; reject this proposal as a duplicate",
            proposal.patient,
            proposal.kind.resource_type(),
            coding.system,
            coding.code
        )));
    }
    let resource_type = proposal.kind.resource_type();
    let created = create::create(
        conn,
        call,
        resource_type,
        resource,
        None,
        ReturnPreference::Minimal,
    )
    .await?;
    let resource_id = created_id(created.location.as_deref(), resource_type)?;
    let provenance = build_provenance(&proposal, call, resource_type, &resource_id);
    let written = create::create(
        conn,
        call,
        "Provenance",
        provenance,
        None,
        ReturnPreference::Minimal,
    )
    .await?;
    let provenance_id = created_id(written.location.as_deref(), "Provenance")?;
    sqlx::query(
        "UPDATE proposals SET status = 'accepted', decided_at = now(), decided_by = $2, \
             resource_type = $3, resource_id = $4, provenance_id = $5 \
         WHERE tenant = current_setting('infoctor.tenant') AND id = $1",
    )
    .bind(proposal.id)
    .bind(&call.context.user)
    .bind(resource_type)
    .bind(&resource_id)
    .bind(&provenance_id)
    .execute(&mut *conn)
    .await?;
    tracing::info!(
        request_id = %call.context.request_id,
        tenant = %call.context.tenant,
        proposal = %proposal.id,
        resource_type,
        resource_id = %resource_id,
        "proposal accepted"
    );
    fetch(conn, id, false).await
}

/// Rejects a pending proposal with the clinician's reason, which is kept.
pub async fn reject(
    conn: &mut PgConnection,
    call: &Call,
    id: &str,
    reason: &str,
) -> FhirResult<Proposal> {
    let reason = reason.trim();
    reject_nul("reason", reason)?;
    if reason.is_empty() {
        return Err(FhirError::invalid(
            "a rejection needs a reason: send {\"reason\": \"...\"}",
            Some("reason"),
        ));
    }
    let proposal = fetch(conn, id, true).await?;
    ensure_pending(&proposal)?;
    sqlx::query(
        "UPDATE proposals SET status = 'rejected', decided_at = now(), decided_by = $2, \
             reason = $3 \
         WHERE tenant = current_setting('infoctor.tenant') AND id = $1",
    )
    .bind(proposal.id)
    .bind(&call.context.user)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    tracing::info!(
        request_id = %call.context.request_id,
        tenant = %call.context.tenant,
        proposal = %proposal.id,
        "proposal rejected"
    );
    fetch(conn, id, false).await
}

/// Takes the id out of a `Location` of the form `{base}/{Type}/{id}/_history/{v}`.
fn created_id(location: Option<&str>, resource_type: &str) -> FhirResult<String> {
    location
        .and_then(|location| {
            let mut parts = location.rsplit('/');
            let _version = parts.next()?;
            let history = parts.next()?;
            let id = parts.next()?;
            let found_type = parts.next()?;
            (history == "_history" && found_type == resource_type).then(|| id.to_owned())
        })
        .ok_or_else(|| {
            FhirError::Internal(format!(
                "created {resource_type} has no Location to read its id from"
            ))
        })
}

fn status_concept(system: &str, code: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code }] })
}

fn checked_status(
    requested: Option<&str>,
    allowed: &[&str],
    default: &'static str,
) -> FhirResult<String> {
    let Some(status) = requested else {
        return Ok(default.to_owned());
    };
    if allowed.contains(&status) {
        Ok(status.to_owned())
    } else {
        Err(FhirError::invalid(
            format!(
                "clinicalStatus '{status}' is not valid here; use one of {}",
                allowed.join(", ")
            ),
            Some("clinicalStatus"),
        ))
    }
}

/// Builds the resource an acceptance creates.
fn build_resource(proposal: &Proposal, acceptance: &Acceptance) -> FhirResult<Value> {
    let codings = match &acceptance.code {
        Some(code) => {
            if code.system.trim().is_empty() || code.code.trim().is_empty() {
                return Err(FhirError::invalid(
                    "an edited code needs a system and a code",
                    Some("code"),
                ));
            }
            vec![code.clone()]
        }
        None => proposal.codings.clone(),
    };
    let text = codings
        .first()
        .map(|coding| coding.display.clone())
        .unwrap_or_default();
    let code = json!({ "coding": codings, "text": text });
    let recorded = format_instant(store::now_millis());
    let subject = json!({ "reference": proposal.patient });
    let mut resource = match proposal.kind {
        ProposalKind::Problem => {
            let status = checked_status(
                acceptance.clinical_status.as_deref(),
                CONDITION_STATUSES,
                "active",
            )?;
            json!({
                "resourceType": "Condition",
                "clinicalStatus": status_concept(CONDITION_CLINICAL, &status),
                "verificationStatus": status_concept(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "confirmed",
                ),
                "category": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item",
                        "display": "Problem List Item",
                    }],
                }],
                "code": code,
                "subject": subject,
                "recordedDate": recorded,
            })
        }
        ProposalKind::Allergy => {
            let status = checked_status(
                acceptance.clinical_status.as_deref(),
                ALLERGY_STATUSES,
                "active",
            )?;
            json!({
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": status_concept(ALLERGY_CLINICAL, &status),
                "verificationStatus": status_concept(
                    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "confirmed",
                ),
                "code": code,
                "patient": subject,
                "recordedDate": recorded,
            })
        }
        ProposalKind::Medication => {
            let status = checked_status(
                acceptance.clinical_status.as_deref(),
                MEDICATION_STATUSES,
                "active",
            )?;
            json!({
                "resourceType": "MedicationStatement",
                "status": status,
                "medicationCodeableConcept": code,
                "subject": subject,
                "dateAsserted": recorded,
                "derivedFrom": [{ "reference": proposal.note }],
            })
        }
    };
    if let Some(encounter) = &proposal.encounter {
        let field = match proposal.kind {
            ProposalKind::Medication => "context",
            _ => "encounter",
        };
        resource[field] = json!({ "reference": encounter });
    }
    if let Some(note) = acceptance.note.as_deref().filter(|n| !n.trim().is_empty()) {
        resource["note"] = json!([{ "text": note }]);
    }
    Ok(resource)
}

/// Builds the Provenance of an acceptance: the clinician who accepted it,
/// the model that proposed it, and the note version it came from.
fn build_provenance(proposal: &Proposal, call: &Call, resource_type: &str, id: &str) -> Value {
    let participant = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
    json!({
        "resourceType": "Provenance",
        "target": [{ "reference": format!("{resource_type}/{id}") }],
        "recorded": format_instant(store::now_millis()),
        "activity": {
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                "code": "CREATE",
            }],
        },
        "reason": [{ "text": format!("accepted proposal {}", proposal.id) }],
        "agent": [
            {
                "type": { "coding": [{ "system": participant, "code": "verifier" }] },
                "who": { "display": call.context.user },
            },
            {
                "type": { "coding": [{ "system": participant, "code": "assembler" }] },
                "who": {
                    "display": format!(
                        "{} {} ({})",
                        proposal.model, proposal.model_version, proposal.terminology
                    ),
                },
            },
        ],
        "entity": [{ "role": "source", "what": { "reference": proposal.note } }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_attachment_decodes() {
        let data = base64::engine::general_purpose::STANDARD.encode("Denies chest pain.");
        let content =
            json!({ "attachment": { "contentType": "text/plain; charset=utf-8", "data": data } });
        assert_eq!(
            attachment_text(&content).as_deref(),
            Some("Denies chest pain.")
        );
    }

    #[test]
    fn other_content_type_is_skipped() {
        let data = base64::engine::general_purpose::STANDARD.encode("<p>x</p>");
        let content = json!({ "attachment": { "contentType": "text/html", "data": data } });
        assert_eq!(attachment_text(&content), None);
    }

    #[test]
    fn created_id_reads_location() {
        let location = "http://h/fhir/t/Condition/abc/_history/1";
        assert_eq!(created_id(Some(location), "Condition").unwrap(), "abc");
        assert!(created_id(Some(location), "Provenance").is_err());
        assert!(created_id(None, "Condition").is_err());
    }

    #[test]
    fn invalid_clinical_status_is_rejected() {
        let err = checked_status(Some("cured"), CONDITION_STATUSES, "active").unwrap_err();
        assert!(err.to_string().contains("cured"), "{err}");
        assert_eq!(
            checked_status(None, CONDITION_STATUSES, "active").unwrap(),
            "active"
        );
    }
}
