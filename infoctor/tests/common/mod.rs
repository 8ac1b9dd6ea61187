//! Helpers shared by the command-line tests.

/// Returns the test PostgreSQL server's URL: `INFOCTOR_TEST_DATABASE_URL`,
/// or the machine's server on 127.0.0.1:5432.
pub fn server_url() -> String {
    std::env::var("INFOCTOR_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Returns `url` with its database name replaced by `name`, keeping any
/// query string.
pub fn with_database(url: &str, name: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = head[scheme_end..]
        .find('/')
        .map_or(head, |slash| &head[..scheme_end + slash]);
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}
