//! `history-instance` and `history-type`, newest version first.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::search::{Bundle, Entry};
use super::{Body, Call, FhirResponse, check_type};
use crate::error::{FhirError, FhirResult};
use crate::search::params::{DEFAULT_COUNT, MAX_COUNT};
use crate::store::{self, HistoryQuery, format_instant};

fn parse_instant(name: &str, value: &str) -> FhirResult<DateTime<Utc>> {
    infoctor_fhir::datetime::DateRange::parse(value)
        .map(|range| range.low)
        .map_err(|err| FhirError::invalid(format!("invalid {name}: {err}"), Some(name)))
}

/// Reads history for one resource (`id` given) or a whole type.
pub async fn history(
    conn: &mut PgConnection,
    call: &Call,
    resource_type: &str,
    id: Option<&str>,
    pairs: &[(String, String)],
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    let mut query = HistoryQuery {
        count: DEFAULT_COUNT,
        ..HistoryQuery::default()
    };
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => {
                query.count = value
                    .parse()
                    .ok()
                    .filter(|count| (1..=MAX_COUNT).contains(count))
                    .ok_or_else(|| {
                        FhirError::invalid(
                            format!("invalid _count '{value}': use 1 to {MAX_COUNT}"),
                            Some("_count"),
                        )
                    })?;
            }
            "_since" => query.since = Some(parse_instant("_since", value)?),
            "_at" => query.at_or_before = Some(parse_instant("_at", value)?),
            "_offset" => {
                query.offset = value
                    .parse()
                    .ok()
                    .filter(|offset| *offset >= 0)
                    .ok_or_else(|| {
                        FhirError::invalid(format!("invalid _offset '{value}'"), Some("_offset"))
                    })?;
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(FhirError::invalid(
                    format!("unknown history parameter '{other}'; use _count, _since or _at"),
                    Some(other),
                ));
            }
        }
    }
    if let Some(id) = id {
        if !store::is_valid_id(id) {
            return Err(FhirError::NotFound {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            });
        }
        // A resource that never existed is 404 rather than an empty history.
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT version_id FROM resources WHERE tenant = current_setting('infoctor.tenant') \
             AND resource_type = $1 AND id = $2",
        )
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        if exists.is_none() {
            return Err(FhirError::NotFound {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            });
        }
    }
    let (versions, total) = store::history(conn, resource_type, id, &query).await?;
    let mut bundle = Bundle::new("history");
    bundle.total = Some(total);
    let path = match id {
        Some(id) => format!("{}/{resource_type}/{id}/_history", call.base),
        None => format!("{}/{resource_type}/_history", call.base),
    };
    let mut base_query = form_urlencoded::Serializer::new(String::new());
    base_query.append_pair("_count", &query.count.to_string());
    if let Some(since) = query.since {
        base_query.append_pair("_since", &format_instant(since));
    }
    if let Some(at) = query.at_or_before {
        base_query.append_pair("_at", &format_instant(at));
    }
    let base_query = base_query.finish();
    bundle.link.push(serde_json::json!({"relation": "self", "url": format!("{path}?{base_query}&_offset={}", query.offset)}));
    if query.offset + query.count < total {
        bundle.link.push(serde_json::json!({"relation": "next", "url": format!("{path}?{base_query}&_offset={}", query.offset + query.count)}));
    }
    if query.offset > 0 {
        let previous = (query.offset - query.count).max(0);
        bundle.link.push(serde_json::json!({"relation": "previous", "url": format!("{path}?{base_query}&_offset={previous}")}));
    }
    for version in versions {
        let url = format!("{}/{}", version.resource_type, version.id);
        let (method, status) = match version.operation.as_str() {
            "create" => ("POST", "201 Created"),
            "delete" => ("DELETE", "200 OK"),
            _ => ("PUT", "200 OK"),
        };
        bundle.entry.push(Entry {
            full_url: Some(format!("{}/{url}", call.base)),
            request: Some(serde_json::json!({"method": method, "url": if method == "POST" { version.resource_type.clone() } else { url.clone() }})),
            response: Some(serde_json::json!({
                "status": status,
                "etag": version.etag(),
                "lastModified": format_instant(version.last_updated),
            })),
            resource: version.body.map(Body::Raw),
            search: None,
        });
    }
    bundle.into_response()
}
