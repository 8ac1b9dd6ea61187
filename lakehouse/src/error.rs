//! Errors of the lakehouse: change capture, Delta tables and SQL.

/// Error raised by change capture, table maintenance or SQL.
#[derive(Debug, thiserror::Error)]
pub enum LakehouseError {
    /// The lakehouse root is neither a folder nor a supported URL.
    #[error("invalid lakehouse root '{root}': {reason}")]
    InvalidRoot { root: String, reason: String },
    /// A Delta Lake operation failed.
    #[error("Delta table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// Building or reading Arrow data failed.
    #[error("Arrow data: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// An operational database query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The replication stream failed.
    #[error("logical replication: {0}")]
    Replication(#[from] pg_walstream::ReplicationError),
    /// The database is not set up for logical replication.
    #[error("{0}")]
    NotReplicable(String),
    /// Another capture worker holds the replication slot.
    #[error(
        "replication slot '{0}' is held by another capture worker; stop it first or use another slot name"
    )]
    SlotBusy(String),
    /// A slot of that name belongs to another database of the server.
    #[error(
        "replication slot '{slot}' belongs to database '{database}' on the same PostgreSQL \
         server, and slot names are shared by all its databases; give this database's capture \
         its own slot with --capture-slot (INFOCTOR_CAPTURE_SLOT)"
    )]
    SlotOfOtherDatabase { slot: String, database: String },
    /// The slot fills another lakehouse.
    #[error(
        "replication slot '{slot}' fills the lakehouse at {recorded}, not {requested}; use the \
         original --lakehouse-root, or another --capture-slot to fill a second lakehouse"
    )]
    OtherLakehouse {
        slot: String,
        recorded: String,
        requested: String,
    },
    /// A replicated row does not have the shape of `resource_versions`.
    #[error("unexpected change record at LSN {lsn}: {reason}")]
    Decode { lsn: String, reason: String },
    /// A view definition cannot be used.
    #[error("invalid view '{name}': {reason}")]
    InvalidView { name: String, reason: String },
    /// Reading the change log for a view failed.
    #[error("view update failed: {0}")]
    View(String),
    /// The tenant does not exist.
    #[error("tenant '{0}' not found")]
    UnknownTenant(String),
    /// Local file access failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl LakehouseError {
    pub(crate) fn delta(
        table: impl std::fmt::Display,
    ) -> impl FnOnce(deltalake::DeltaTableError) -> Self {
        let table = table.to_string();
        move |source| LakehouseError::Delta { table, source }
    }
}
