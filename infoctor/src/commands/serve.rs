//! `infoctor serve`: the HTTP API with graceful shutdown on SIGINT or SIGTERM.

use anyhow::Context;
use infoctor_ehr_ops::api::{self, ApiConfig};
use infoctor_ehr_ops::postgres::Database;

use crate::ListenArgs;
use crate::database::{self, Settings};

/// Arguments of `infoctor serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
}

/// Serves until a shutdown signal arrives. `on_ready` runs once the socket listens.
pub async fn serve_until_signal(
    db: &Database,
    args: &ListenArgs,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let config = ApiConfig {
        max_body_bytes: args.max_body_bytes,
        public_url: args.public_url.clone(),
        ..ApiConfig::default()
    };
    let router = api::router(db.clone(), config);
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
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("server stopped");
    Ok(())
}

async fn shutdown_signal() {
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
pub async fn run(settings: &Settings, args: ServeArgs) -> anyhow::Result<()> {
    let opened = database::open(settings, args.listen.db_connections).await?;
    let result = serve_until_signal(&opened.db, &args.listen, |address| {
        println!("Infoctor FHIR API listening on http://{address}/fhir/{{tenant}}");
    })
    .await;
    opened.close().await?;
    result
}
