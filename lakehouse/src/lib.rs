//! The lakehouse of Infoctor: every committed change of the operational
//! store, captured from PostgreSQL logical replication into per-tenant Delta
//! Lake tables, and read-only SQL over them through DataFusion.
//!
//! | module | role |
//! |---|---|
//! | [`capture`] | the capture worker: slot, snapshot copy, exactly-once batches |
//! | [`bronze`] | the change-log table and its schema |
//! | [`layout`] | where each tenant's tables live |
//! | [`maintenance`] | compaction, vacuum, checkpoints |
//! | [`sql`] | tenant-isolated, limited SQL sessions and result formats |
//! | [`status`] | slot lag and table state, as a report and as metrics |
//! | [`views`] | SQL on FHIR views materialised as Delta tables |
//! | [`tenant_views`] | the views each tenant adds, versioned in PostgreSQL |
//! | [`view_run`] | a view run over the operational store, in CSV, NDJSON, JSON or Parquet |
//! | [`api`] | HTTP routes for SQL, tenant views and metrics |

pub mod api;
pub mod bronze;
pub mod capture;
pub mod error;
pub mod layout;
pub mod maintenance;
pub mod sql;
pub mod status;
pub mod tenant_views;
pub mod view_run;
pub mod views;

pub use error::LakehouseError;
pub use layout::Lakehouse;
