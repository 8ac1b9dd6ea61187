//! SQL on FHIR v2 ViewDefinitions evaluated into Arrow record batches.
//!
//! A [`ViewDefinition`] describes a table over one FHIR resource type with FHIRPath
//! expressions. [`CompiledView::compile`] validates it and parses every expression once;
//! [`CompiledView::evaluate`] then flattens resources (`serde_json::Value`) into one
//! [`RecordBatch`](arrow::record_batch::RecordBatch), and [`ViewBuilder`] does the same one
//! resource at a time, for streams too large to hold.
//!
//! ```
//! use infoctor_sql_on_fhir::CompiledView;
//! use serde_json::json;
//!
//! let view = CompiledView::from_json_str(r#"{
//!     "resource": "Patient",
//!     "select": [{"column": [
//!         {"name": "id", "path": "getResourceKey()", "type": "id"},
//!         {"name": "birth_date", "path": "birthDate", "type": "date"}
//!     ]}]
//! }"#)?;
//! let patient = json!({"resourceType": "Patient", "id": "p1", "birthDate": "1970-06"});
//! let batch = view.evaluate([&patient])?;
//! assert_eq!(batch.num_rows(), 1);
//! # Ok::<(), infoctor_sql_on_fhir::ViewError>(())
//! ```
//!
//! # What is supported
//!
//! Everything the SQL on FHIR v2 specification defines for a view runner and its test suite
//! covers: `select` (nested), `column` (`name`, `path`, `type`, `collection`, `description`,
//! `tag`), `forEach`, `forEachOrNull`, `repeat`, `unionAll`, `where`, and `constant` with
//! every `value[x]` type. `%rowIndex` is the 0-based index of the element that a `forEach`,
//! `forEachOrNull` or `repeat` is on. Selects that do not iterate inherit it, and it is 0 at
//! the resource. FHIRPath is the engine of `infoctor_fhir::fhirpath`, which includes the
//! functions the specification requires (`getResourceKey`, `getReferenceKey`, `ofType`,
//! `extension`, `join`, `first`, `exists`, `empty`, `lowBoundary`, `highBoundary` on dates,
//! times, decimals and Periods) and most of FHIRPath besides. [`run_conformance`] runs the
//! specification's test suite, and all 134 tests of its 2026-05 version pass.
//!
//! Invalid definitions fail at compile time with [`ViewError::Invalid`] or
//! [`ViewError::Expression`], naming the place (`select[0].column[1] 'family'`). Data-dependent
//! problems fail at evaluation with [`ViewError::Evaluation`], naming the resource: several
//! values in a column not marked `collection: true`, a `where` path that returns something
//! other than a boolean, a value that does not fit the column type.
//!
//! # Column types
//!
//! | column `type` | Arrow type |
//! |---|---|
//! | `boolean` | `Boolean` |
//! | `integer`, `positiveInt`, `unsignedInt` | `Int32` |
//! | `integer64` | `Int64` |
//! | `decimal` | `Float64` |
//! | `string`, `code`, `id`, `uri`, `url`, `canonical`, `oid`, `uuid`, `markdown`, `base64Binary`, `xhtml` | `Utf8` |
//! | `date`, `dateTime`, `instant`, `time` | `Utf8`, the value as written, so `1970-06` stays a month |
//! | a complex type or backbone element (`Coding`, `Observation.component`) | `Utf8` holding the element's JSON |
//! | none | `Utf8`, primitive values as text |
//!
//! A column with `collection: true` is a `List` of the item type. An `ansi/type` tag sets
//! the Arrow type instead. `DATE` gives `Date32`, whose values must be full dates, as
//! `lowBoundary()` returns them. `TIMESTAMP` or `TIMESTAMP WITH TIME ZONE` gives
//! `Timestamp(Microsecond, "UTC")`, whose values must be date-times with seconds and a zone.
//! `BOOLEAN`, `INTEGER`, `BIGINT`, `DOUBLE PRECISION` and `VARCHAR` give the matching type.
//!
//! `decimal` is `Float64` because a FHIR decimal column has no fixed scale: each value keeps
//! its own number of digits, which an Arrow `Decimal128` column cannot hold. Digits beyond
//! the 15 to 17 significant ones of a double are lost.
//!
//! # Built-in views
//!
//! [`builtin_views`] returns views for the common clinical resources (patient, encounter,
//! condition, observation, ...), stored as JSON in the crate's `views/` folder. Each has the
//! resource key as `id`, the patient key as `patient_id`, the first coding of the main codes,
//! statuses and dates. A date is given as written in a text column (`birth_date`) and as
//! typed start and end columns from `lowBoundary()` and `highBoundary()` (`birth_date_start`,
//! `birth_date_end`), `Date32` for dates and UTC timestamps otherwise. For a Period element
//! the text columns are `<name>_start_text` and `<name>_end_text`. For a choice element that
//! may be a dateTime or a Period (`onset`, `performed`), `<name>` is the dateTime as written
//! and the typed columns cover both forms.
//!
//! # Limits
//!
//! - `getResourceKey()` returns the resource `id`, and `getReferenceKey()` the id of a
//!   relative or absolute literal reference (`Patient/123`). Conditional references
//!   (`Patient?identifier=...`), `urn:uuid:` and contained references give no key.
//! - Contained resources are not extracted into rows of their own.
//! - A column without `type` is `Utf8`, because types are not inferred from the path.
//! - `repeat` stops with an error beyond [`MAX_REPEAT_DEPTH`] levels or
//!   [`MAX_REPEAT_ELEMENTS`] elements per resource.
//! - The FHIRPath limits of `infoctor_fhir::fhirpath` apply: `resolve()` does not fetch, and
//!   `memberOf()`, `aggregate()` and quantity unit conversion are not implemented.

mod builder;
mod builtin;
mod compile;
mod conformance;
mod convert;
mod definition;
mod error;
mod eval;
mod rows;
mod types;

pub use builder::ViewBuilder;
pub use builtin::{builtin_view, builtin_view_names, builtin_views};
pub use compile::CompiledView;
pub use conformance::{
    ConformanceError, ConformanceReport, FileReport, TestOutcome, run_conformance, run_test_file,
};
pub use definition::{
    Column, Constant, ConstantType, ConstantValue, Select, Tag, ViewDefinition, WhereClause,
};
pub use error::ViewError;
pub use eval::{MAX_REPEAT_DEPTH, MAX_REPEAT_ELEMENTS};
pub use rows::batch_to_json_rows;
