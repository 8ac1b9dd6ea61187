//! `infoctor evaluate nlp`: scores concept extraction against the gold labels.

use std::path::{Path, PathBuf};

use anyhow::Context;
use infoctor_nlp::Embedder;
use infoctor_nlp::evaluate::report::{render_markdown, render_sweep, render_table};
use infoctor_nlp::evaluate::{
    CODINGS_DATA_DIR, GoldSet, ICD10CM_DATA_DIR, Part, Terminology, evaluate, gold_file,
    sweep_link_thresholds,
};
use infoctor_nlp::linking::{ConceptIndex, DEFAULT_LINK_THRESHOLD, Linker};
use infoctor_nlp::model_files::default_model_dir;

/// Subcommands of `infoctor evaluate`.
#[derive(Debug, clap::Subcommand)]
pub enum EvaluateCommand {
    /// Run concept extraction over the labelled notes of one part and print
    /// precision, recall and F1 next to a dictionary baseline without context.
    Nlp(NlpEvaluateArgs),
}

/// Output format of `infoctor evaluate nlp`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Options of `infoctor evaluate nlp`.
#[derive(Debug, clap::Args)]
pub struct NlpEvaluateArgs {
    /// Part of the labelled notes: `dev` for tuning, `test` (frozen) for reporting.
    #[arg(long, default_value = "test")]
    pub part: Part,
    /// Shared data folder with the note corpora, `icd10cm-2026/` and
    /// `synthea-bulk-10-2024/ndjson/`.
    #[arg(long, env = "INFOCTOR_TEST_DATA", default_value = "../shared/data")]
    pub data: PathBuf,
    /// Folder with `gold/dev.jsonl` and `gold/test.jsonl`.
    #[arg(long, env = "INFOCTOR_EVALUATION_DIR", default_value = "evaluation")]
    pub labels: PathBuf,
    /// Output on standard output.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Also write a Markdown report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Leave out the embedding-linking system, which needs the model files.
    #[arg(long)]
    pub no_linking: bool,
    /// Minimum cosine similarity of an embedding link.
    #[arg(long, default_value_t = DEFAULT_LINK_THRESHOLD)]
    pub link_threshold: f32,
    /// Model folder filled by `infoctor models fetch`. Default:
    /// models/all-MiniLM-L6-v2 in the data dir.
    #[arg(long, env = "INFOCTOR_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Folder for the cached concept title embeddings. Default:
    /// models/concept-vectors in the data dir.
    #[arg(long)]
    pub vector_cache: Option<PathBuf>,
    /// Comma-separated similarity thresholds at which to score the linking
    /// system instead of the full report; only with `--part dev`.
    #[arg(long, value_delimiter = ',')]
    pub sweep_link_thresholds: Vec<f32>,
}

/// Runs `infoctor evaluate ...`.
pub fn run(data_dir: &Path, command: EvaluateCommand) -> anyhow::Result<()> {
    match command {
        EvaluateCommand::Nlp(args) => run_nlp(data_dir, args),
    }
}

fn run_nlp(data_dir: &Path, args: NlpEvaluateArgs) -> anyhow::Result<()> {
    if !args.sweep_link_thresholds.is_empty() && args.part != Part::Dev {
        anyhow::bail!(
            "--sweep-link-thresholds tunes the linking threshold, which is done on the dev part \
             only; add --part dev"
        );
    }
    if !args.sweep_link_thresholds.is_empty() && args.no_linking {
        anyhow::bail!("--sweep-link-thresholds needs linking; remove --no-linking");
    }
    anyhow::ensure!(
        args.data.is_dir(),
        "data folder {} not found: give --data or set INFOCTOR_TEST_DATA to the folder that \
         holds icd10cm-2026/ and the note corpora",
        args.data.display()
    );

    let gold_path = gold_file(&args.labels, args.part);
    let gold = GoldSet::load(&gold_path, args.part)
        .with_context(|| format!("reading the gold labels {}", gold_path.display()))?;
    let texts = gold
        .read_texts(&args.data)
        .with_context(|| format!("reading the labelled notes from {}", args.data.display()))?;
    let icd10cm_dir = args.data.join(ICD10CM_DATA_DIR);
    let codings_dir = args.data.join(CODINGS_DATA_DIR);
    let terminology = Terminology::load(&icd10cm_dir, &codings_dir).with_context(|| {
        format!(
            "loading the terminology from {} and {}",
            icd10cm_dir.display(),
            codings_dir.display()
        )
    })?;

    let linking = if args.no_linking {
        None
    } else {
        let model_dir = args
            .model_dir
            .clone()
            .unwrap_or_else(|| default_model_dir(data_dir));
        let embedder = Embedder::load(&model_dir)
            .with_context(|| format!("loading the model from {}", model_dir.display()))?;
        let cache_dir = args
            .vector_cache
            .clone()
            .unwrap_or_else(|| data_dir.join("models").join("concept-vectors"));
        let index = ConceptIndex::from_dictionary(&embedder, &terminology.dictionary, &cache_dir)
            .with_context(|| {
            format!(
                "building the concept index with its cache in {}",
                cache_dir.display()
            )
        })?;
        Some((embedder, index))
    };
    let linker = linking.as_ref().map(|(embedder, index)| {
        let mut linker = Linker::new(embedder, index);
        linker.threshold = args.link_threshold;
        linker
    });

    if !args.sweep_link_thresholds.is_empty() {
        let mut linker = linker.expect("linking is on for a sweep");
        linker.threshold = args
            .sweep_link_thresholds
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min);
        let reports = sweep_link_thresholds(
            &gold,
            &texts,
            &terminology,
            &linker,
            &args.sweep_link_thresholds,
        )?;
        match args.format {
            OutputFormat::Table => print!("{}", render_sweep(&reports)),
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        }
        return Ok(());
    }

    let report = evaluate(&gold, &texts, &terminology, linker.as_ref())?;
    match args.format {
        OutputFormat::Table => print!("{}", render_table(&report)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if let Some(path) = &args.report {
        let markdown = render_markdown(&report, &command_line());
        std::fs::write(path, markdown)
            .with_context(|| format!("writing the report {}", path.display()))?;
        tracing::info!(path = %path.display(), "evaluation report written");
    }
    Ok(())
}

/// Returns this process's command line as `infoctor ARGS...`, quoting
/// arguments that contain spaces.
fn command_line() -> String {
    let mut parts = vec!["infoctor".to_string()];
    for argument in std::env::args().skip(1) {
        if argument.contains(char::is_whitespace) {
            parts.push(format!("'{argument}'"));
        } else {
            parts.push(argument);
        }
    }
    parts.join(" ")
}
