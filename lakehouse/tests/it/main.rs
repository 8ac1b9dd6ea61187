//! Integration tests of change capture and lakehouse SQL against a real
//! PostgreSQL with `wal_level=logical` and real Delta tables on disk.

mod capture;
mod common;
mod sql;
mod views;
