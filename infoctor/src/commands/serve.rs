//! `infoctor serve`: the HTTP API with graceful shutdown on SIGINT or SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use infoctor_ehr_ops::api::{self, ApiConfig};
use infoctor_ehr_ops::postgres::Database;
use infoctor_lakehouse::api::LakehouseState;
use infoctor_lakehouse::sql::QueryService;
use tokio_util::sync::CancellationToken;

use crate::ListenArgs;
use crate::assist::{self, NoteExtractor, TerminologyArgs};
use crate::database::{self, Settings};
use crate::lakehouse::{CaptureArgs, LakeArgs, SqlLimitArgs, spawn_capture};

/// Arguments of `infoctor serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub services: ServiceArgs,
}

/// Options of the services that run beside the FHIR API.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Do not run change capture in this process (run `infoctor capture`
    /// separately, or not at all).
    #[arg(long, env = "INFOCTOR_NO_CAPTURE")]
    pub no_capture: bool,
    #[command(flatten)]
    pub capture: CaptureArgs,
    #[command(flatten)]
    pub sql: SqlLimitArgs,
    #[command(flatten)]
    pub terminology: TerminologyArgs,
}

/// Serves until a shutdown signal arrives. `on_ready` runs once the socket
/// listens. Change capture runs beside the API unless disabled, and stops
/// after the server.
pub async fn serve_until_signal(
    db: &Database,
    settings: &Settings,
    lake_args: &LakeArgs,
    args: &ListenArgs,
    services: &ServiceArgs,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let mut config = ApiConfig {
        max_body_bytes: args.max_body_bytes,
        public_url: args.public_url.clone(),
        ..ApiConfig::default()
    };
    let lake = lake_args.lakehouse(&settings.data_dir)?;
    let shutdown = CancellationToken::new();
    let capture_config = services.capture.config();
    let slot_name = capture_config.slot_name.clone();
    let (capture, capture_metrics) = if services.no_capture {
        (None, None)
    } else {
        let (handle, metrics) =
            spawn_capture(db.clone(), lake.clone(), capture_config, shutdown.clone())?;
        (Some(handle), Some(metrics))
    };
    let queries = QueryService::new(lake.clone(), services.sql.limits())
        .context("starting the SQL query runtime")?
        .with_tenant_views(db.clone());
    let lakehouse = LakehouseState {
        db: db.clone(),
        lake,
        queries: Arc::new(queries),
        capture_metrics,
        slot_name,
    };
    let extractor = if services.terminology.is_empty() {
        tracing::info!("note extraction off: no --icd10cm or --codings given");
        None
    } else {
        let terminology = services.terminology.clone();
        let extractor = tokio::task::spawn_blocking(move || NoteExtractor::load(&terminology))
            .await
            .context("loading the terminology")??;
        config.operations.push(assist::extract_capability());
        Some(Arc::new(extractor))
    };
    let router = api::router_with(db.clone(), config, assist::routes(extractor))
        .merge(infoctor_lakehouse::api::router(lakehouse));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {}; is another server using that port? choose one with --listen",
                args.listen
            )
        })?;
    let address = listener
        .local_addr()
        .context("reading the listening address")?;
    tracing::info!(%address, "server started");
    on_ready(address);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP");
    tracing::info!("server stopped");
    shutdown.cancel();
    if let Some(capture) = capture
        && let Err(err) = capture.await
    {
        tracing::error!(error = %err, "change capture task failed");
    }
    served
}

pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested");
}

/// Runs `infoctor serve`.
pub async fn run(settings: &Settings, lake: &LakeArgs, args: ServeArgs) -> anyhow::Result<()> {
    let opened = database::open(settings, args.listen.db_connections).await?;
    let result = serve_until_signal(
        &opened.db,
        settings,
        lake,
        &args.listen,
        &args.services,
        |address| {
            println!("Infoctor FHIR API listening on http://{address}/fhir/{{tenant}}");
            println!("SQL over the lakehouse: POST http://{address}/lakehouse/{{tenant}}/sql");
        },
    )
    .await;
    opened.close().await?;
    result
}
