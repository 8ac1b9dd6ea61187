//! Notes to proposals: runs concept extraction over a DocumentReference's
//! text and stores the drafts for review, from the command line
//! (`infoctor nlp propose`) and over HTTP
//! (`POST /fhir/{tenant}/DocumentReference/{id}/$extract`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use http::StatusCode;
use infoctor_ehr_ops::api::review::{begin, respond};
use infoctor_ehr_ops::api::{AppState, Ctx, OperationCapability};
use infoctor_ehr_ops::error::{FhirError, FhirResult};
use infoctor_ehr_ops::interactions::Call;
use infoctor_ehr_ops::proposals::{
    self, Coding, DraftProposal, ModelInfo, ProposalKind, SaveOutcome, Span,
};
use infoctor_nlp::propose::{DraftKind, SkipReason, drafts};
use infoctor_nlp::terminology::{DEFAULT_HARVEST_SYSTEMS, harvest_fhir_codings, load_icd10cm_dir};
use infoctor_nlp::{Dictionary, extract};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use std::collections::BTreeMap;

/// Largest attachment text read, in bytes. Clinical notes are far smaller;
/// the cap keeps one request from holding a thread and gigabytes of memory.
const MAX_NOTE_BYTES: usize = 1 << 20;

/// Spans kept per proposal; a concept mentioned more often keeps its first
/// ones and records the full count in `attributes.mentions`.
const MAX_SPANS_PER_PROPOSAL: usize = 50;

/// Name recorded with every proposal drawn by this extractor.
const MODEL_NAME: &str = "infoctor-nlp concept extraction (dictionary and ConText)";

/// Terminology options shared by `serve`, `demo` and `nlp propose`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TerminologyArgs {
    /// Folder of the ICD-10-CM tables (icd10cm_codes_*.tsv) whose titles
    /// notes are matched against.
    #[arg(long = "icd10cm", env = "INFOCTOR_ICD10CM_DIR")]
    pub icd10cm: Option<PathBuf>,
    /// Folder of FHIR NDJSON files whose SNOMED CT, RxNorm and LOINC codings
    /// are matched by display text; repeat the option for several folders.
    #[arg(long = "codings", env = "INFOCTOR_CODINGS_DIR", value_delimiter = ',')]
    pub codings: Vec<PathBuf>,
}

impl TerminologyArgs {
    /// Checks whether any terminology is configured.
    pub fn is_empty(&self) -> bool {
        self.icd10cm.is_none() && self.codings.is_empty()
    }

    /// Fails with what to give when no terminology is configured.
    pub fn require(&self) -> anyhow::Result<()> {
        if self.is_empty() {
            anyhow::bail!(
                "no terminology to match: give --icd10cm DIR (the ICD-10-CM tables) and/or \
                 --codings DIR (FHIR NDJSON files whose codings to match)"
            );
        }
        Ok(())
    }
}

/// A loaded dictionary and the model description stored with proposals.
pub struct NoteExtractor {
    dictionary: Dictionary,
    model: ModelInfo,
}

impl NoteExtractor {
    /// Returns the dictionary notes are matched against.
    pub fn dictionary(&self) -> &Dictionary {
        &self.dictionary
    }

    /// Loads the configured terminology.
    pub fn load(args: &TerminologyArgs) -> anyhow::Result<NoteExtractor> {
        args.require()?;
        let started = Instant::now();
        let mut dictionary = Dictionary::new();
        let mut sources = Vec::new();
        if let Some(dir) = &args.icd10cm {
            let entries = load_icd10cm_dir(dir)
                .with_context(|| format!("loading ICD-10-CM from {}", dir.display()))?;
            sources.push(format!("ICD-10-CM ({} codes)", entries.len()));
            dictionary.extend(entries);
        }
        let mut harvested = 0;
        for dir in &args.codings {
            let entries = harvest_fhir_codings(dir, &DEFAULT_HARVEST_SYSTEMS)
                .with_context(|| format!("reading codings from {}", dir.display()))?;
            harvested += entries.len();
            dictionary.extend(entries);
        }
        if !args.codings.is_empty() {
            sources.push(format!(
                "SNOMED CT, RxNorm and LOINC codings ({harvested} concepts)"
            ));
        }
        let mut digest = Sha256::new();
        for concept in dictionary.concepts() {
            digest.update(concept.system.as_bytes());
            digest.update([0]);
            digest.update(concept.code.as_bytes());
            digest.update([0]);
            digest.update(concept.display.as_bytes());
            digest.update([0]);
        }
        let fingerprint = hex::encode(&digest.finalize()[..6]);
        let terminology = format!("{}; dictionary {fingerprint}", sources.join(", "));
        tracing::info!(
            concepts = dictionary.len(),
            terms = dictionary.term_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            dictionary = %fingerprint,
            "terminology loaded for note extraction"
        );
        Ok(NoteExtractor {
            dictionary,
            model: ModelInfo {
                model: MODEL_NAME.to_owned(),
                model_version: infoctor_nlp::VERSION.to_owned(),
                terminology,
            },
        })
    }
}

/// Report of `$extract` and `nlp propose` for one note.
#[derive(Debug, Serialize)]
pub struct NoteReport {
    /// `DocumentReference/{id}/_history/{version}`.
    pub note: String,
    pub patient: String,
    pub model: ModelInfo,
    /// Mentions found in the note's text attachments.
    pub mentions: usize,
    /// Mentions left out, by reason (negated, uncertain, ...).
    pub skipped: BTreeMap<SkipReason, usize>,
    #[serde(flatten)]
    pub saved: SaveOutcome,
}

/// Extracts a note's concepts and stores its proposals in `conn`'s
/// transaction.
pub async fn propose_note(
    conn: &mut PgConnection,
    call: &Call,
    extractor: &Arc<NoteExtractor>,
    note_id: &str,
) -> FhirResult<NoteReport> {
    let note = proposals::read_note(conn, note_id).await?;
    if note.attachments.iter().all(Option::is_none) {
        return Err(FhirError::invalid(
            format!(
                "DocumentReference/{note_id} has no attachment with inline text/plain data \
                 in UTF-8; only such notes can be read"
            ),
            Some("DocumentReference.content.attachment"),
        ));
    }
    for (index, text) in note.attachments.iter().enumerate() {
        let Some(text) = text else { continue };
        let field = format!("DocumentReference.content[{index}].attachment.data");
        if text.len() > MAX_NOTE_BYTES {
            return Err(FhirError::invalid(
                format!(
                    "attachment {index} of DocumentReference/{note_id} has {} bytes of text; \
                     notes longer than {MAX_NOTE_BYTES} bytes are not read",
                    text.len()
                ),
                Some(&field),
            ));
        }
        proposals::reject_nul(&field, text)?;
    }
    let attachments = note.attachments.clone();
    let worker = Arc::clone(extractor);
    let (mentions, skipped, merged) =
        tokio::task::spawn_blocking(move || draw_drafts(&worker, &attachments))
            .await
            .map_err(|err| FhirError::Internal(format!("note extraction failed: {err}")))?;
    let saved = proposals::save(
        conn,
        call,
        &note,
        &extractor.model,
        merged.into_values().collect(),
    )
    .await?;
    Ok(NoteReport {
        note: format!("DocumentReference/{}/_history/{}", note.id, note.version),
        patient: format!("Patient/{}", note.patient_id),
        model: extractor.model.clone(),
        mentions,
        skipped,
        saved,
    })
}

type DraftMap = BTreeMap<(ProposalKind, String, String), DraftProposal>;

/// Extracts every text attachment and merges the drafts by concept.
fn draw_drafts(
    extractor: &NoteExtractor,
    attachments: &[Option<String>],
) -> (usize, BTreeMap<SkipReason, usize>, DraftMap) {
    let mut mentions = 0;
    let mut skipped: BTreeMap<SkipReason, usize> = BTreeMap::new();
    let mut merged: DraftMap = BTreeMap::new();
    for (index, text) in attachments.iter().enumerate() {
        let Some(text) = text else { continue };
        let found = extract(text, &extractor.dictionary);
        mentions += found.len();
        let result = drafts(&found);
        for (reason, count) in result.skipped {
            *skipped.entry(reason).or_default() += count;
        }
        for draft in result.drafts {
            let kind = match draft.kind {
                DraftKind::Problem => ProposalKind::Problem,
                DraftKind::Allergy => ProposalKind::Allergy,
                DraftKind::Medication => ProposalKind::Medication,
            };
            let codings: Vec<Coding> = draft
                .concepts
                .iter()
                .map(|concept| Coding {
                    system: concept.system.clone(),
                    code: concept.code.clone(),
                    display: concept.display.clone(),
                })
                .collect();
            let key = (kind, codings[0].system.clone(), codings[0].code.clone());
            let spans = draft.evidence.into_iter().map(|evidence| Span {
                attachment: index,
                start: evidence.start,
                end: evidence.end,
                text: evidence.text,
            });
            match merged.get_mut(&key) {
                Some(existing) => existing.spans.extend(spans),
                None => {
                    merged.insert(
                        key,
                        DraftProposal {
                            kind,
                            codings,
                            spans: spans.collect(),
                            attributes: draft.attributes,
                        },
                    );
                }
            }
        }
    }
    for draft in merged.values_mut() {
        let total = draft.spans.len();
        if total > MAX_SPANS_PER_PROPOSAL {
            draft.spans.truncate(MAX_SPANS_PER_PROPOSAL);
        }
        draft.attributes["mentions"] = serde_json::json!(total);
    }
    (mentions, skipped, merged)
}

/// Describes the `$extract` operation for the CapabilityStatement of a
/// server that runs with a terminology.
pub fn extract_capability() -> OperationCapability {
    OperationCapability {
        resource_type: "DocumentReference".to_owned(),
        name: "extract".to_owned(),
        definition: "urn:infoctor:OperationDefinition:DocumentReference-extract".to_owned(),
        documentation: "POST with no body to [base]/DocumentReference/[id]/$extract. Finds the \
                        problems, allergies and medications the note states as the patient's own \
                        and stores them as proposals for review under /review/[tenant]/proposals; \
                        nothing enters the record until a reviewer accepts a proposal."
            .to_owned(),
    }
}

/// Builds the `$extract` route to merge into the FHIR router. Without a
/// loaded extractor the route returns 501 with what to configure.
pub fn routes(extractor: Option<Arc<NoteExtractor>>) -> Router<AppState> {
    Router::new()
        .route(
            "/fhir/{tenant}/DocumentReference/{id}/$extract",
            post(extract_note),
        )
        .layer(Extension(extractor))
}

async fn extract_note(
    State(state): State<AppState>,
    Extension(extractor): Extension<Option<Arc<NoteExtractor>>>,
    ctx: Ctx,
    Path((_tenant, id)): Path<(String, String)>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let Some(extractor) = extractor else {
            return Err(FhirError::NotSupported(
                "note extraction is off on this server; start it with --icd10cm DIR and/or \
                 --codings DIR"
                    .to_owned(),
            ));
        };
        let mut tx = begin(&state, &ctx).await?;
        let report = propose_note(&mut tx, &ctx.call, &extractor, &id).await?;
        tx.commit().await?;
        Ok((StatusCode::OK, report))
    }
    .await;
    respond(&ctx, "POST", "extract", started, result)
}

/// Lists the notes `nlp propose` works on.
async fn note_ids(
    db: &infoctor_ehr_ops::postgres::Database,
    tenant: &str,
    args: &crate::commands::nlp::ProposeArgs,
) -> anyhow::Result<Vec<String>> {
    if !infoctor_ehr_ops::tenants::exists(db, tenant)
        .await
        .context("looking up the tenant")?
    {
        anyhow::bail!("tenant '{tenant}' not found; list tenants with `infoctor tenant list`");
    }
    if !args.notes.is_empty() {
        return Ok(args.notes.clone());
    }
    if !args.all && args.latest.is_none() {
        anyhow::bail!("name the notes to read: --note ID (repeatable), --latest N or --all");
    }
    let mut tx = db
        .begin_tenant(tenant)
        .await
        .context("opening a tenant transaction")?;
    // The latest N of each patient by DocumentReference.date; --all takes
    // every live note.
    let limit = if args.all {
        i64::MAX
    } else {
        args.latest.unwrap_or(1).max(1)
    };
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM ( \
             SELECT r.id, row_number() OVER ( \
                 PARTITION BY v.resource->'subject'->>'reference' \
                 ORDER BY v.resource->>'date' DESC NULLS LAST, r.id) AS rank \
             FROM resources r JOIN resource_versions v \
               ON v.tenant = r.tenant AND v.resource_type = r.resource_type \
              AND v.id = r.id AND v.version_id = r.version_id \
             WHERE r.tenant = current_setting('infoctor.tenant') \
               AND r.resource_type = 'DocumentReference' AND NOT r.deleted) notes \
         WHERE rank <= $1 ORDER BY id",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .context("listing the tenant's notes")?;
    tx.commit()
        .await
        .context("closing the tenant transaction")?;
    Ok(ids)
}

/// Totals of a propose run.
#[derive(Debug, Default)]
pub struct ProposeTotals {
    pub notes: usize,
    pub failed: usize,
    pub created: usize,
    pub unchanged: usize,
    pub already_recorded: usize,
    pub skipped: usize,
}

/// Proposes for the chosen notes of a tenant, one transaction per note. A
/// note that fails is logged and counted, and the run goes on.
pub async fn propose_notes(
    db: &infoctor_ehr_ops::postgres::Database,
    tenant: &str,
    extractor: &Arc<NoteExtractor>,
    args: &crate::commands::nlp::ProposeArgs,
    verbose: bool,
) -> anyhow::Result<ProposeTotals> {
    let ids = note_ids(db, tenant, args).await?;
    let context = infoctor_ehr_ops::context::RequestContext::system(tenant, "infoctor-nlp-propose");
    let call = Call {
        context,
        base: format!("urn:infoctor:{tenant}"),
    };
    let mut totals = ProposeTotals::default();
    for id in &ids {
        let result: FhirResult<NoteReport> = async {
            let mut tx = db.begin_tenant(tenant).await?;
            infoctor_ehr_ops::store::ensure_tenant(&mut tx, tenant).await?;
            let report = propose_note(&mut tx, &call, extractor, id).await?;
            tx.commit().await?;
            Ok(report)
        }
        .await;
        totals.notes += 1;
        match result {
            Ok(report) => {
                totals.created += report.saved.created;
                totals.unchanged += report.saved.unchanged;
                totals.already_recorded += report.saved.already_recorded;
                let skipped: usize = report.skipped.values().sum();
                totals.skipped += skipped;
                if verbose {
                    println!(
                        "{}: {} mentions, {} new proposals, {} unchanged, {} already in the record, {} not proposed (negated, uncertain, hypothetical, someone else's or not a problem, allergy or medication)",
                        report.note,
                        report.mentions,
                        report.saved.created,
                        report.saved.unchanged,
                        report.saved.already_recorded,
                        skipped
                    );
                }
            }
            Err(FhirError::UnknownTenant(_)) => {
                anyhow::bail!(
                    "tenant '{tenant}' not found; create it with `infoctor tenant create {tenant}`"
                )
            }
            Err(err) => {
                totals.failed += 1;
                tracing::error!(tenant, note = %id, error = %err, "proposing for a note failed");
                eprintln!("DocumentReference/{id}: {err}");
            }
        }
    }
    Ok(totals)
}

/// Runs `infoctor nlp propose`.
pub async fn run_propose(
    settings: &crate::database::Settings,
    args: crate::commands::nlp::ProposeArgs,
) -> anyhow::Result<()> {
    let extractor = Arc::new(NoteExtractor::load(&args.terminology)?);
    let opened = crate::database::open(settings, 4).await?;
    let result = propose_notes(&opened.db, &args.tenant, &extractor, &args, true).await;
    opened.close().await?;
    let totals = result?;
    println!(
        "{} notes read: {} new proposals, {} unchanged, {} already in the record, {} mentions not proposed, {} notes failed",
        totals.notes,
        totals.created,
        totals.unchanged,
        totals.already_recorded,
        totals.skipped,
        totals.failed
    );
    if totals.failed > 0 {
        anyhow::bail!(
            "{} of {} notes failed; see the messages above",
            totals.failed,
            totals.notes
        );
    }
    Ok(())
}
