//! Turns replicated rows of `resource_versions` into change records.

use chrono::{DateTime, Utc};
use pg_walstream::RowData;

use crate::bronze::{ChangeRecord, Operation, Source, format_lsn};
use crate::error::LakehouseError;

/// Decodes one row of `resource_versions` (text format, as both pgoutput and
/// COPY deliver it) and returns its tenant and record. `lsn` is where the row
/// was read, for error messages.
pub fn decode_row(
    row: &RowData,
    commit_lsn: u64,
    commit_time: Option<DateTime<Utc>>,
    source: Source,
    lsn: u64,
) -> Result<(String, ChangeRecord), LakehouseError> {
    let text = |name: &str| -> Result<&str, LakehouseError> {
        row.get(name)
            .and_then(|value| value.as_str())
            .ok_or_else(|| LakehouseError::Decode {
                lsn: format_lsn(lsn),
                reason: format!("column '{name}' is missing or not text"),
            })
    };
    let invalid = |name: &str, value: &str| LakehouseError::Decode {
        lsn: format_lsn(lsn),
        reason: format!("column '{name}' has an invalid value '{value}'"),
    };
    let tenant = text("tenant")?.to_owned();
    let version_text = text("version_id")?;
    let version_id: i64 = version_text
        .parse()
        .map_err(|_| invalid("version_id", version_text))?;
    let operation_text = text("operation")?;
    let operation =
        Operation::parse(operation_text).ok_or_else(|| invalid("operation", operation_text))?;
    let updated_text = text("last_updated")?;
    let last_updated =
        parse_timestamptz(updated_text).ok_or_else(|| invalid("last_updated", updated_text))?;
    let resource = match row.get("resource") {
        Some(value) if !value.is_null() => Some(
            value
                .as_str()
                .ok_or_else(|| invalid("resource", "(not UTF-8 text)"))?
                .to_owned(),
        ),
        _ => None,
    };
    if resource.is_none() != (operation == Operation::Delete) {
        return Err(LakehouseError::Decode {
            lsn: format_lsn(lsn),
            reason: format!(
                "operation '{operation_text}' does not match the presence of a resource body"
            ),
        });
    }
    let record = ChangeRecord {
        resource_type: text("resource_type")?.to_owned(),
        id: text("id")?.to_owned(),
        version_id,
        operation,
        last_updated,
        commit_lsn,
        commit_time,
        source,
        resource,
    };
    Ok((tenant, record))
}

/// Parses PostgreSQL's ISO text output of a `timestamptz`
/// (`2024-05-01 12:34:56.123456+00`, offsets with or without minutes).
pub fn parse_timestamptz(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pg_walstream::ColumnValue;

    fn row(operation: &str, resource: Option<&str>) -> RowData {
        let mut pairs = vec![
            ("tenant", ColumnValue::text("acme")),
            ("resource_type", ColumnValue::text("Patient")),
            ("id", ColumnValue::text("p1")),
            ("version_id", ColumnValue::text("3")),
            (
                "last_updated",
                ColumnValue::text("2024-05-01 12:34:56.5+05:30"),
            ),
            ("operation", ColumnValue::text(operation)),
        ];
        pairs.push((
            "resource",
            resource.map_or(ColumnValue::Null, ColumnValue::text),
        ));
        RowData::from_pairs(pairs)
    }

    #[test]
    fn update_row_decodes() {
        let (tenant, record) = decode_row(
            &row("update", Some(r#"{"resourceType": "Patient"}"#)),
            99,
            None,
            Source::Wal,
            99,
        )
        .unwrap();
        assert_eq!(tenant, "acme");
        assert_eq!(record.version_id, 3);
        assert_eq!(record.operation, Operation::Update);
        assert_eq!(
            record.last_updated.to_rfc3339(),
            "2024-05-01T07:04:56.500+00:00"
        );
        assert_eq!(record.commit_lsn, 99);
    }

    #[test]
    fn delete_without_body_decodes() {
        let (_, record) = decode_row(&row("delete", None), 1, None, Source::Wal, 1).unwrap();
        assert_eq!(record.resource, None);
    }

    #[test]
    fn delete_with_body_is_rejected() {
        let err = decode_row(&row("delete", Some("{}")), 1, None, Source::Wal, 1).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn unknown_operation_is_rejected() {
        let err = decode_row(&row("merge", Some("{}")), 1, None, Source::Wal, 1).unwrap_err();
        assert!(err.to_string().contains("'operation'"), "{err}");
    }

    #[test]
    fn timestamp_offsets_parse() {
        assert!(parse_timestamptz("2024-01-01 00:00:00+00").is_some());
        assert!(parse_timestamptz("2024-01-01 00:00:00.123456-03").is_some());
        assert!(parse_timestamptz("2024-01-01T00:00:00Z").is_none());
    }
}
