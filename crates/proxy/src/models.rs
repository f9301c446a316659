//! Answers the proxy gives from its pools, in OpenAI's formats: the model
//! listing (`GET /v1/models`, `GET /v1/models/{model}`) and the 404 for a
//! model no pool serves.
//!
//! With only the default pool there is nothing to list: those requests go
//! to a replica as before, which lists its own models.

use std::sync::OnceLock;
use std::time::SystemTime;

use inferlb_core::ReplicaSet;
use serde::Serialize;

use crate::client::Generated;
use crate::h1::request::Local;

/// `created` of every listed model: when this process started.
fn created() -> u64 {
    static CREATED: OnceLock<u64> = OnceLock::new();
    *CREATED.get_or_init(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    /// A LoRA adapter's base model, as vLLM lists adapters.
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<&'a str>,
}

impl<'a> Model<'a> {
    fn new(id: &'a str) -> Self {
        Self {
            id,
            object: "model",
            created: created(),
            owned_by: "inferlb",
            parent: None,
        }
    }

    /// A model of `pool` by the name `id`: an adapter carries its parent.
    fn of(pool: &'a inferlb_core::PoolView, id: &'a str) -> Self {
        let mut model = Self::new(id);
        if pool.spec().is_adapter(id) {
            model.parent = Some(pool.name().as_str());
        }
        model
    }
}

#[derive(Serialize)]
struct List<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: &'static str,
}

/// Whether the snapshot has pools other than the default one.
pub(crate) fn has_named_pools(set: &ReplicaSet) -> bool {
    set.pools().iter().any(|p| !p.name().is_default())
}

/// OpenAI's 404 for a model nobody serves.
pub(crate) fn not_found(model: Option<&str>) -> Vec<u8> {
    let message = match model {
        Some(m) => format!("The model `{m}` does not exist or has no replica behind this load balancer."),
        None => "The request names no model and this load balancer has no default pool: send the model in the body's \"model\" or the model header.".to_owned(),
    };
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind: "invalid_request_error",
            param: Some("model"),
            code: "model_not_found",
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The status line of [`not_found`].
pub(crate) const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\n";
pub(crate) const TOO_LARGE: &[u8] = b"HTTP/1.1 413 Content Too Large\r\n";

/// The 413 of a body too large to read for its model with no default pool
/// to send it to: it names the limit, and the way around it.
pub(crate) fn too_large_to_inspect(limit: usize, header: &str) -> Vec<u8> {
    let message = format!(
        "The request body is over routing.max_inspect_body_bytes ({limit} bytes), the most read to find its \"model\", and there is no default pool: name the model in the {header} header instead."
    );
    serde_json::to_vec(&serde_json::json!({
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "model",
            "code": "request_too_large",
        }
    }))
    .unwrap_or_default()
}
const OK: &[u8] = b"HTTP/1.1 200 OK\r\n";

/// A path segment with its `%XX` escapes decoded (`meta-llama%2FLlama-3`
/// is `meta-llama/Llama-3`); a malformed escape, or bytes that are not
/// UTF-8 once decoded, leave the segment as it was.
pub(crate) fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                None => return segment.to_owned(),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_owned())
}

/// The answer to a model route, or `None` when the request should go to a
/// replica (no named pools). `model` is the `{model}` of a retrieval.
pub(crate) fn answer(
    set: &ReplicaSet,
    local: Local,
    model: &str,
) -> Option<(&'static [u8], Vec<u8>)> {
    if !has_named_pools(set) {
        return None;
    }
    // A pool that scales itself serves its model even at zero replicas: a
    // request is held while one starts.
    let serving = |i: usize| {
        let pool = &set.pools()[i];
        !pool.name().is_default() && (set.pool_has_routable(i) || pool.queue().is_some())
    };
    let answer = match local {
        Local::ListModels => {
            let mut data = Vec::new();
            for (i, pool) in set.pools().iter().enumerate() {
                if serving(i) {
                    data.push(Model::new(pool.name().as_str()));
                    data.extend(pool.spec().aliases.iter().map(|a| Model::new(a)));
                    data.extend(pool.spec().adapters.iter().map(|a| Model::of(pool, a)));
                }
            }
            let list = List {
                object: "list",
                data,
            };
            (OK, serde_json::to_vec(&list).unwrap_or_default())
        }
        Local::Health => return None,
        Local::GetModel(_) => match set.pool_named(model).filter(|&i| serving(i)) {
            Some(i) => (
                OK,
                serde_json::to_vec(&Model::of(&set.pools()[i], model)).unwrap_or_default(),
            ),
            None => (NOT_FOUND, not_found(Some(model))),
        },
    };
    Some(answer)
}

/// A [`Generated`] JSON response.
pub(crate) fn generated<'a>(status_line: &'a [u8], body: &'a [u8]) -> Generated<'a> {
    Generated {
        status_line,
        extra_headers: b"",
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decoded;

    #[test]
    fn model_ids_in_paths_are_percent_decoded() {
        assert_eq!(
            percent_decoded("meta-llama%2FLlama-3"),
            "meta-llama/Llama-3"
        );
        assert_eq!(percent_decoded("a%2fb%20c"), "a/b c");
        assert_eq!(percent_decoded("plain"), "plain");
        // Malformed escapes and non-UTF-8 results are left alone.
        assert_eq!(percent_decoded("bad%2"), "bad%2");
        assert_eq!(percent_decoded("bad%zz"), "bad%zz");
        assert_eq!(percent_decoded("x%ff"), "x%ff");
    }
}
