//! `[cors]`: which browser origins may call the API, checked into the
//! lists the proxy answers preflights from.

use super::Problems;

/// `[cors]`: which browser origins may call the API, and what the proxy
/// answers their preflights (the Fetch standard's CORS protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Exact origins (`scheme://host[:port]`, lowercase); empty with
    /// `any_origin`.
    pub origins: Vec<String>,
    /// `"*"`: any origin.
    pub any_origin: bool,
    /// Upper-case method names.
    pub methods: Vec<String>,
    /// Lowercase header names; empty with `any_header`.
    pub headers: Vec<String>,
    /// `"*"`: the headers a preflight asks for are allowed.
    pub any_header: bool,
    pub expose_headers: Vec<String>,
    pub max_age_s: u64,
    pub allow_credentials: bool,
}

impl Cors {
    /// Whether `origin` (as the browser sent it) may call the API.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        self.any_origin
            || self
                .origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// Whether a preflight's `Access-Control-Request-Method` is allowed.
    pub fn allows_method(&self, method: &[u8]) -> bool {
        self.methods.iter().any(|m| m.as_bytes() == method)
    }

    /// Whether every header of a preflight's
    /// `Access-Control-Request-Headers` list is allowed.
    pub fn allows_headers(&self, list: &[u8]) -> bool {
        self.any_header
            || list
                .split(|&b| b == b',')
                .map(|h| h.trim_ascii())
                .filter(|h| !h.is_empty())
                .all(|h| {
                    self.headers
                        .iter()
                        .any(|a| a.as_bytes().eq_ignore_ascii_case(h))
                })
    }
}

/// `[cors]`: origins without paths, known methods, header names.
pub(super) fn cors(p: &mut Problems, file: &super::file::FileCors) -> Cors {
    let any_origin = file.allowed_origins.iter().any(|o| o == "*");
    if file.allowed_origins.is_empty() {
        p.add(
            "cors.allowed_origins",
            "name the origins allowed (e.g. [\"https://ui.example.com\"]), or [\"*\"] for any",
        );
    }
    let mut origins = Vec::new();
    for (i, origin) in file.allowed_origins.iter().enumerate() {
        if origin == "*" {
            continue;
        }
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let ok =
            rest.is_some_and(|host| !host.is_empty() && !host.contains(['/', '?', '#', ' ', '*']));
        if ok {
            origins.push(origin.to_ascii_lowercase());
        } else {
            p.add(
                format!("cors.allowed_origins[{i}]"),
                format!("{origin:?} is not an origin such as \"https://ui.example.com\" (scheme and host, no path), or \"*\""),
            );
        }
    }
    let allow_credentials = file.allow_credentials.unwrap_or(false);
    if allow_credentials && any_origin {
        p.add(
            "cors.allow_credentials",
            "browsers refuse credentials with any origin (\"*\"): list the origins",
        );
    }
    // Each entry a token (RFC 9110 §5.6.2), in one case; the bad ones named.
    let mut tokens = |field: &str, what: &str, list: &[String], upper: bool| -> Vec<String> {
        list.iter()
            .enumerate()
            .filter_map(|(i, t)| {
                if !super::is_token(t) {
                    p.add(format!("cors.{field}[{i}]"), format!("{t:?} is not {what}"));
                    return None;
                }
                Some(if upper {
                    t.to_ascii_uppercase()
                } else {
                    t.to_ascii_lowercase()
                })
            })
            .collect()
    };
    let default_methods = ["GET", "POST", "OPTIONS"].map(String::from);
    let methods = tokens(
        "allowed_methods",
        "a method",
        file.allowed_methods.as_deref().unwrap_or(&default_methods),
        true,
    );
    let mut names = |field: &str, list: &[String]| tokens(field, "a header name", list, false);
    let headers = names(
        "allowed_headers",
        file.allowed_headers.as_deref().unwrap_or(&["*".to_owned()]),
    );
    let expose_headers = names(
        "expose_headers",
        file.expose_headers
            .as_deref()
            .unwrap_or(&["X-Request-Id".to_owned()]),
    );
    let any_header = headers.iter().any(|h| h == "*");
    Cors {
        origins,
        any_origin,
        methods,
        headers: headers.into_iter().filter(|h| h != "*").collect(),
        any_header,
        expose_headers,
        max_age_s: file.max_age_s.unwrap_or(600),
        allow_credentials,
    }
}
