//! FHIR R4 building blocks shared by every part of Infoctor: the structure
//! model and validation, FHIRPath, date ranges, search parameters and their
//! index extraction, and OperationOutcome.
pub mod datetime;
pub mod fhirpath;
pub mod model;
pub mod outcome;
pub mod search;
pub mod validate;
