//! The operational store and FHIR R4 REST API of Infoctor.
//!
//! | module | role |
//! |---|---|
//! | [`postgres`] | connection pools, migrations, the application role, the private cluster |
//! | [`store`] | versioned resources and their search index rows |
//! | [`search`] | search parameters to SQL, keyset paging, includes |
//! | [`interactions`] | one module per FHIR interaction, shared by REST and Bundles |
//! | [`api`] | axum routes, request context, OperationOutcome rendering |
//! | [`load`] | bulk loading of NDJSON and Bundle files |
//! | [`proposals`] | proposals drawn from notes, kept apart from the record until accepted |
//! | [`tenants`] | tenant administration |

pub mod api;
pub mod context;
pub mod error;
pub mod interactions;
pub mod load;
pub mod postgres;
pub mod proposals;
pub mod search;
pub mod store;
pub mod tenants;
