//! FHIR R4 building blocks shared by every part of Infoctor: the structure
//! model and validation, FHIRPath, date ranges, search parameters and their
//! index extraction, OperationOutcome, and JSON reading and writing.
pub mod datetime;
pub mod fhirpath;
pub mod json;
mod lexical;
pub mod model;
pub mod outcome;
pub mod search;
pub mod validate;
