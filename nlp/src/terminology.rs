//! Loaders that turn terminology files into [`DictionaryEntry`] lists.
//!
//! - [`load_icd10cm`] reads the ICD-10-CM code table (tab-separated, with a
//!   header row naming the columns `code`, `kind`, `long_description` and
//!   `short_description_fy2025`) and, optionally, the instructional notes
//!   table (`code`, `note_type`, `text`), whose `includes` and
//!   `inclusionTerm` notes become synonyms.
//! - [`harvest_fhir_codings`] collects the codings of chosen code systems
//!   (SNOMED CT, RxNorm, LOINC by default) from FHIR resources in NDJSON,
//!   such as a Bulk Data export, with their displays and the CodeableConcept
//!   texts as synonyms.
//!
//! Files ending in `.gz` are decompressed while reading.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde_json::Value;

use crate::dictionary::DictionaryEntry;
use crate::error::{NlpError, Result};

pub const ICD10CM_SYSTEM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
pub const SNOMED_SYSTEM: &str = "http://snomed.info/sct";
pub const RXNORM_SYSTEM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub const LOINC_SYSTEM: &str = "http://loinc.org";

/// Code systems [`harvest_fhir_codings`] keeps by default.
pub const DEFAULT_HARVEST_SYSTEMS: [&str; 3] = [SNOMED_SYSTEM, RXNORM_SYSTEM, LOINC_SYSTEM];

/// Opens a text file, decompressing it when its name ends in `.gz`.
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).map_err(|source| NlpError::io("opening", path, source))?;
    if path.extension().is_some_and(|extension| extension == "gz") {
        Ok(Box::new(BufReader::new(MultiGzDecoder::new(file))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

/// Reads ICD-10-CM categories, subcategories and codes with their titles.
///
/// Chapters and blocks are skipped: their titles name code ranges, not
/// conditions. The FY2025 short title becomes a synonym where it differs
/// from the long title. With `notes`, `includes` and `inclusionTerm` notes
/// of the loaded codes become synonyms as well.
pub fn load_icd10cm(codes: &Path, notes: Option<&Path>) -> Result<Vec<DictionaryEntry>> {
    let mut entries = Vec::new();
    let mut index_by_code = HashMap::new();
    let mut table = TsvReader::open(codes)?;
    let code_column = table.column("code")?;
    let kind_column = table.column("kind")?;
    let long_column = table.column("long_description")?;
    let short_column = table.optional_column("short_description_fy2025");

    while let Some(row) = table.next_row()? {
        let kind = row.field(kind_column)?;
        if !matches!(kind, "category" | "subcategory" | "code") {
            continue;
        }
        let code = row.field(code_column)?;
        let long = row.field(long_column)?;
        let mut entry = DictionaryEntry::new(ICD10CM_SYSTEM, code, long);
        if let Some(column) = short_column {
            let short = row.field(column)?;
            if !short.is_empty() && short != long {
                entry.synonyms.push(short.to_string());
            }
        }
        index_by_code.insert(code.to_string(), entries.len());
        entries.push(entry);
    }

    if let Some(notes) = notes {
        let mut table = TsvReader::open(notes)?;
        let code_column = table.column("code")?;
        let type_column = table.column("note_type")?;
        let text_column = table.column("text")?;
        while let Some(row) = table.next_row()? {
            if !matches!(row.field(type_column)?, "includes" | "inclusionTerm") {
                continue;
            }
            if let Some(&index) = index_by_code.get(row.field(code_column)?) {
                entries[index]
                    .synonyms
                    .push(row.field(text_column)?.to_string());
            }
        }
    }
    tracing::debug!(path = %codes.display(), concepts = entries.len(), "ICD-10-CM loaded");
    Ok(entries)
}

/// Finds `icd10cm_codes_*.tsv[.gz]` and `icd10cm_notes_*.tsv[.gz]` in a
/// folder and loads them with [`load_icd10cm`]. The notes file is optional.
pub fn load_icd10cm_dir(dir: &Path) -> Result<Vec<DictionaryEntry>> {
    let codes = find_file(dir, "icd10cm_codes_")?.ok_or_else(|| NlpError::NoTerminologyFiles {
        dir: dir.to_path_buf(),
        expected: "icd10cm_codes_*.tsv or .tsv.gz file",
    })?;
    let notes = find_file(dir, "icd10cm_notes_")?;
    load_icd10cm(&codes, notes.as_deref())
}

fn find_file(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    let reader = std::fs::read_dir(dir).map_err(|source| NlpError::io("listing", dir, source))?;
    let mut found = Vec::new();
    for item in reader {
        let item = item.map_err(|source| NlpError::io("listing", dir, source))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && (name.ends_with(".tsv") || name.ends_with(".tsv.gz")) {
            found.push(item.path());
        }
    }
    found.sort();
    Ok(found.pop())
}

/// Codings collected from FHIR resources, keyed by system and code.
#[derive(Debug, Default, Clone)]
pub struct CodingHarvest {
    concepts: BTreeMap<(String, String), (String, BTreeSet<String>)>,
}

impl CodingHarvest {
    pub fn new() -> Self {
        CodingHarvest::default()
    }

    pub fn len(&self) -> usize {
        self.concepts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.concepts.is_empty()
    }

    /// Adds the codings of `systems` found anywhere in a resource. A coding
    /// without a display is skipped, because there is no term to match.
    pub fn add_resource(&mut self, resource: &Value, systems: &[&str]) {
        match resource {
            Value::Object(object) => {
                if let Some(Value::Array(codings)) = object.get("coding") {
                    let text = object.get("text").and_then(Value::as_str);
                    for coding in codings {
                        self.add_coding(coding, text, systems);
                    }
                }
                for value in object.values() {
                    self.add_resource(value, systems);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.add_resource(item, systems);
                }
            }
            _ => {}
        }
    }

    fn add_coding(&mut self, coding: &Value, text: Option<&str>, systems: &[&str]) {
        let field = |name: &str| coding.get(name).and_then(Value::as_str);
        let (Some(system), Some(code), Some(display)) =
            (field("system"), field("code"), field("display"))
        else {
            return;
        };
        if !systems.contains(&system) || code.is_empty() || display.trim().is_empty() {
            return;
        }
        let (_, synonyms) = self
            .concepts
            .entry((system.to_string(), code.to_string()))
            .or_insert_with(|| (display.to_string(), BTreeSet::new()));
        if let Some(text) = text
            && text != display
            && !text.trim().is_empty()
        {
            synonyms.insert(text.to_string());
        }
    }

    /// Reads NDJSON (one resource per line, `.gz` allowed) and adds each
    /// resource's codings.
    pub fn add_ndjson(&mut self, path: &Path, systems: &[&str]) -> Result<()> {
        let reader = open_text(path)?;
        for (index, line) in reader.lines().enumerate() {
            let line = line.map_err(|source| NlpError::io("reading", path, source))?;
            if line.trim().is_empty() {
                continue;
            }
            let resource: Value =
                serde_json::from_str(&line).map_err(|error| NlpError::InvalidTerminology {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message: format!("invalid JSON: {error}"),
                })?;
            self.add_resource(&resource, systems);
        }
        Ok(())
    }

    pub fn into_entries(self) -> Vec<DictionaryEntry> {
        self.concepts
            .into_iter()
            .map(|((system, code), (display, synonyms))| DictionaryEntry {
                system,
                code,
                display,
                synonyms: synonyms.into_iter().collect(),
            })
            .collect()
    }
}

/// Collects codings of `systems` from every `*.ndjson` and `*.ndjson.gz` file
/// in a folder (not its subfolders).
pub fn harvest_fhir_codings(dir: &Path, systems: &[&str]) -> Result<Vec<DictionaryEntry>> {
    let reader = std::fs::read_dir(dir).map_err(|source| NlpError::io("listing", dir, source))?;
    let mut paths = Vec::new();
    for item in reader {
        let item = item.map_err(|source| NlpError::io("listing", dir, source))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.ends_with(".ndjson") || name.ends_with(".ndjson.gz") {
            paths.push(item.path());
        }
    }
    if paths.is_empty() {
        return Err(NlpError::NoTerminologyFiles {
            dir: dir.to_path_buf(),
            expected: ".ndjson or .ndjson.gz files (a FHIR Bulk Data export)",
        });
    }
    paths.sort();
    let mut harvest = CodingHarvest::new();
    for path in &paths {
        harvest.add_ndjson(path, systems)?;
    }
    tracing::debug!(dir = %dir.display(), files = paths.len(), concepts = harvest.len(), "FHIR codings harvested");
    Ok(harvest.into_entries())
}

/// A tab-separated file with a header row.
struct TsvReader {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    header: Vec<String>,
    line_number: usize,
    line: String,
}

struct TsvRow<'a> {
    fields: Vec<&'a str>,
    path: &'a Path,
    line_number: usize,
}

impl TsvReader {
    fn open(path: &Path) -> Result<Self> {
        let mut reader = open_text(path)?;
        let mut header = String::new();
        reader
            .read_line(&mut header)
            .map_err(|source| NlpError::io("reading", path, source))?;
        Ok(TsvReader {
            path: path.to_path_buf(),
            reader,
            header: header
                .trim_end_matches(['\n', '\r'])
                .split('\t')
                .map(str::to_string)
                .collect(),
            line_number: 1,
            line: String::new(),
        })
    }

    fn optional_column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|column| column == name)
    }

    fn column(&self, name: &str) -> Result<usize> {
        self.optional_column(name)
            .ok_or_else(|| NlpError::InvalidTerminology {
                path: self.path.clone(),
                line: 1,
                message: format!(
                    "the header has no column {name:?} (columns: {})",
                    self.header.join(", ")
                ),
            })
    }

    fn next_row(&mut self) -> Result<Option<TsvRow<'_>>> {
        self.line.clear();
        let read = self
            .reader
            .read_line(&mut self.line)
            .map_err(|source| NlpError::io("reading", &self.path, source))?;
        if read == 0 {
            return Ok(None);
        }
        self.line_number += 1;
        Ok(Some(TsvRow {
            fields: self
                .line
                .trim_end_matches(['\n', '\r'])
                .split('\t')
                .collect(),
            path: &self.path,
            line_number: self.line_number,
        }))
    }
}

impl TsvRow<'_> {
    fn field(&self, column: usize) -> Result<&str> {
        self.fields
            .get(column)
            .copied()
            .ok_or_else(|| NlpError::InvalidTerminology {
                path: self.path.to_path_buf(),
                line: self.line_number,
                message: format!(
                    "expected at least {} tab-separated fields, found {}",
                    column + 1,
                    self.fields.len()
                ),
            })
    }
}
