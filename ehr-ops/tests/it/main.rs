//! Integration tests of the FHIR store and API against a real PostgreSQL.
//!
//! All tests share one database created for this test run on the server
//! named by `INFOCTOR_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test works in
//! tenants of its own, so tests run in parallel without seeing each other.

mod attacks;
mod bundles;
mod common;
mod composites;
mod concurrency;
mod index_rows;
mod interactions;
mod load;
mod search;
mod smoke;
mod tenancy;
mod validation;
