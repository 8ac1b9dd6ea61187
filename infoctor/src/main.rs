//! The `infoctor` command: serves the FHIR API, administers tenants, loads
//! FHIR files and runs the demo.

mod assist;
mod commands;
mod database;
mod lakehouse;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

// mimalloc replaces the C library's allocator because parsing, validating
// and indexing resources allocates many small values on several threads. A
// perf profile of a bulk load with the C library's allocator put about half
// of the loader's own CPU samples in malloc and free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Infoctor: an open clinical intelligence platform with an embedded EHR.
#[derive(Debug, Parser)]
#[command(name = "infoctor", version, about)]
struct Cli {
    /// Folder for Infoctor's own data, including the private PostgreSQL
    /// cluster used when DATABASE_URL is not set. Default:
    /// /var/lib/infoctor for root, otherwise $XDG_DATA_HOME/infoctor or
    /// ~/.local/share/infoctor.
    #[arg(long, global = true, env = "INFOCTOR_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// PostgreSQL URL of a role that may create roles and tables; when
    /// unset, a private cluster in the data dir is used.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Password given to the application role `infoctor_app`, for servers
    /// that do not trust local connections.
    #[arg(
        long,
        global = true,
        env = "INFOCTOR_APP_PASSWORD",
        hide_env_values = true
    )]
    app_password: Option<String>,

    /// Log filter in tracing's EnvFilter syntax, for example `info` or
    /// `infoctor_ehr_ops=debug`.
    // The Delta kernel's snapshot builder logs an ERROR each time a table is
    // created, because it first looks for a log that does not exist yet. A
    // real failure to read a table reaches Infoctor as an error, which it
    // logs with the table's URL.
    #[arg(
        long,
        global = true,
        env = "INFOCTOR_LOG",
        default_value = "info,sqlx::postgres::notice=warn,pg_walstream=warn,deltalake_core=warn,buoyant_kernel=warn,buoyant_kernel::snapshot::builder=off"
    )]
    log: String,

    /// Log format.
    #[arg(
        long,
        global = true,
        env = "INFOCTOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(flatten)]
    lake: lakehouse::LakeArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the FHIR R4 API until interrupted.
    Serve(commands::serve::ServeArgs),
    /// Create or list tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Load FHIR NDJSON files, Bundles or folders of them into a tenant.
    Load(commands::load::LoadArgs),
    /// Create the tenant `demo`, load the bundled sample patients and serve.
    Demo(commands::demo::DemoArgs),
    /// Capture committed changes into the lakehouse until interrupted, or
    /// show capture status.
    Capture(commands::capture::CaptureCommandArgs),
    /// Run one read-only SQL statement over a tenant's lakehouse tables.
    Sql(commands::sql::SqlArgs),
    /// Run SQL on FHIR views, or the specification's conformance tests.
    View {
        #[command(subcommand)]
        command: commands::view::ViewCommand,
    },
    /// Model files for the NLP models.
    Models {
        #[command(subcommand)]
        command: commands::nlp::ModelsCommand,
    },
    /// Clinical text processing.
    Nlp {
        #[command(subcommand)]
        command: commands::nlp::NlpCommand,
    },
    /// Evaluate components against labelled data.
    Evaluate {
        #[command(subcommand)]
        command: commands::evaluate::EvaluateCommand,
    },
    /// Lakehouse maintenance.
    Lakehouse {
        #[command(subcommand)]
        command: commands::lakehouse::LakehouseCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Tenant name: lowercase letters, digits, '-' and '_'.
        name: String,
    },
    /// List tenants.
    List,
}

/// Options shared by the serving commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Address and port to listen on.
    #[arg(long, env = "INFOCTOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Public base URL used in links, Location headers and fullUrls
    /// (for example https://ehr.example.org); taken from the Host header
    /// when unset.
    #[arg(long, env = "INFOCTOR_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "INFOCTOR_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Connections in the application pool.
    #[arg(long, env = "INFOCTOR_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|err| anyhow::anyhow!("invalid --log filter '{filter}': {err}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(&cli.log, cli.log_format) {
        eprintln!("error: {err:#}");
        return std::process::ExitCode::FAILURE;
    }
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = database::Settings {
        data_dir: cli.data_dir.unwrap_or_else(database::default_data_dir),
        database_url: cli.database_url,
        app_password: cli.app_password,
    };
    match cli.command {
        Command::Serve(args) => commands::serve::run(&settings, &cli.lake, args).await,
        Command::Tenant { command } => match command {
            TenantCommand::Create { name } => commands::tenant::create(&settings, &name).await,
            TenantCommand::List => commands::tenant::list(&settings).await,
        },
        Command::Load(args) => commands::load::run(&settings, args).await,
        Command::Demo(args) => commands::demo::run(&settings, &cli.lake, args).await,
        Command::Capture(args) => commands::capture::run(&settings, &cli.lake, args).await,
        Command::Sql(args) => commands::sql::run(&settings, &cli.lake, args).await,
        Command::Models { command } => commands::nlp::run_models(&settings.data_dir, command),
        Command::Nlp { command } => commands::nlp::run_nlp(&settings, command).await,
        Command::Evaluate { command } => commands::evaluate::run(&settings.data_dir, command),
        Command::View { command } => commands::view::run(&settings, command).await,
        Command::Lakehouse { command } => {
            commands::lakehouse::run(&settings, &cli.lake, command).await
        }
    }
}
