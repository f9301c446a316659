//! Hot-path errors: a small `Copy` kind, mapped to a status code at the edge.
//!
//! No allocation and no formatting happen on an error path: each kind has a
//! static JSON body, and whether the connection must close is part of the kind.

/// What went wrong with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Malformed request line, header or framing; 400 and close.
    BadRequest,
    /// A JSON body that names `"model"` more than once; 400 and close.
    AmbiguousModel,
    /// A body read for its model that is not valid JSON; 400 and close.
    InvalidJson,
    /// A JSON API path (`/v1/chat/completions`, ...) with a body of another
    /// content type; 415 and close.
    UnsupportedMediaType,
    /// A head over the size limit or with too many fields; 431 and close.
    HeadTooLarge,
    /// A body over the configured limit; 413 and close.
    BodyTooLarge,
    /// The client did not send a whole head in time; 408 and close.
    HeadTimeout,
    /// The request body stalled past the body timeout; 408 and close.
    BodyTimeout,
    /// An HTTP version other than 1.0 and 1.1; 505 and close.
    VersionNotSupported,
    /// CONNECT or TRACE, which a reverse proxy does not serve; 405.
    MethodNotAllowed,
    /// An unknown method or a transfer coding other than chunked; 501 and close.
    NotImplemented,
    /// An `Expect` other than `100-continue`; 417.
    ExpectationFailed,
    /// A CORS preflight for an origin, method or header `[cors]` does not
    /// allow; 403.
    CorsRefused,
    /// No replica can take requests; 503 with `Retry-After`.
    NoReplica,
    /// The worker's share of `limits.inspect_budget_bytes` is held by other
    /// bodies, and this one names its model nowhere else; 503 with
    /// `Retry-After` and close.
    InspectBusy,
    /// Held for an autoscaling pool's first replica past `queue_timeout_ms`;
    /// 503 with `Retry-After`.
    QueueTimeout,
    /// The autoscaling pool already holds `max_queued` requests; 429 with
    /// `Retry-After`.
    QueueFull,
    /// Every replica tried refused the connection or timed out; 502.
    ConnectFailed,
    /// The replica failed before a whole response head arrived; 502.
    UpstreamFailed,
    /// No response head within the upstream timeout; 504.
    UpstreamTimeout,
    /// The replica did not read the request within the write timeout; 504.
    UpstreamWriteTimeout,
}

impl ErrorKind {
    /// The status line, reason included.
    pub(crate) fn status_line(self) -> &'static [u8] {
        match self {
            Self::BadRequest | Self::AmbiguousModel | Self::InvalidJson => {
                b"HTTP/1.1 400 Bad Request\r\n"
            }
            Self::UnsupportedMediaType => b"HTTP/1.1 415 Unsupported Media Type\r\n",
            Self::HeadTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Self::BodyTooLarge => b"HTTP/1.1 413 Content Too Large\r\n",
            Self::HeadTimeout | Self::BodyTimeout => b"HTTP/1.1 408 Request Timeout\r\n",
            Self::VersionNotSupported => b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
            Self::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\n",
            Self::NotImplemented => b"HTTP/1.1 501 Not Implemented\r\n",
            Self::ExpectationFailed => b"HTTP/1.1 417 Expectation Failed\r\n",
            Self::CorsRefused => b"HTTP/1.1 403 Forbidden\r\n",
            Self::NoReplica | Self::QueueTimeout | Self::InspectBusy => {
                b"HTTP/1.1 503 Service Unavailable\r\n"
            }
            Self::QueueFull => b"HTTP/1.1 429 Too Many Requests\r\n",
            Self::ConnectFailed | Self::UpstreamFailed => b"HTTP/1.1 502 Bad Gateway\r\n",
            Self::UpstreamTimeout | Self::UpstreamWriteTimeout => {
                b"HTTP/1.1 504 Gateway Timeout\r\n"
            }
        }
    }

    /// The JSON body, in OpenAI's error shape (`{"error": {"message",
    /// "type", "param", "code"}}`), so OpenAI SDKs raise their error with
    /// the message and code: `invalid_request_error` for the client's
    /// mistakes, `rate_limit_error` for a full queue, `server_error` when no
    /// replica could answer.
    pub(crate) fn body(self) -> &'static [u8] {
        match self {
            Self::BadRequest => br#"{"error":{"message":"The request is malformed or its framing is ambiguous.","type":"invalid_request_error","param":null,"code":"bad_request"}}"#,
            Self::AmbiguousModel => br#"{"error":{"message":"The request body names \"model\" more than once.","type":"invalid_request_error","param":"model","code":"duplicate_model"}}"#,
            Self::InvalidJson => br#"{"error":{"message":"The request body is not valid JSON.","type":"invalid_request_error","param":null,"code":"invalid_json"}}"#,
            Self::UnsupportedMediaType => br#"{"error":{"message":"This endpoint takes a JSON body: send it with Content-Type: application/json.","type":"invalid_request_error","param":null,"code":"unsupported_media_type"}}"#,
            Self::HeadTooLarge => br#"{"error":{"message":"The request head is over the size or field-count limit.","type":"invalid_request_error","param":null,"code":"request_header_fields_too_large"}}"#,
            Self::BodyTooLarge => br#"{"error":{"message":"The request body is over the configured limit (limits.max_request_body_bytes; chunk extensions count too).","type":"invalid_request_error","param":null,"code":"request_too_large"}}"#,
            Self::HeadTimeout => br#"{"error":{"message":"The request head did not arrive in time.","type":"invalid_request_error","param":null,"code":"request_timeout"}}"#,
            Self::BodyTimeout => br#"{"error":{"message":"The request body arrived too slowly (timeouts.body_read_timeout_ms, request_read_timeout_ms or limits.min_body_rate_bytes_per_s).","type":"invalid_request_error","param":null,"code":"request_timeout"}}"#,
            Self::VersionNotSupported => br#"{"error":{"message":"Only HTTP/1.0 and HTTP/1.1 are served on this listener.","type":"invalid_request_error","param":null,"code":"http_version_not_supported"}}"#,
            Self::MethodNotAllowed => br#"{"error":{"message":"CONNECT and TRACE are not served by this proxy.","type":"invalid_request_error","param":null,"code":"method_not_allowed"}}"#,
            Self::NotImplemented => br#"{"error":{"message":"The method or transfer coding is not supported.","type":"invalid_request_error","param":null,"code":"not_implemented"}}"#,
            Self::ExpectationFailed => br#"{"error":{"message":"Only Expect: 100-continue is supported.","type":"invalid_request_error","param":null,"code":"expectation_failed"}}"#,
            Self::CorsRefused => br#"{"error":{"message":"The preflight's Origin, method or headers are not allowed by this load balancer's [cors] settings.","type":"invalid_request_error","param":null,"code":"cors_not_allowed"}}"#,
            Self::NoReplica => br#"{"error":{"message":"No replica can take requests right now; retry later.","type":"server_error","param":null,"code":"no_routable_replica"}}"#,
            Self::InspectBusy => br#"{"error":{"message":"Too many request bodies are being read for their model right now; retry later, or name the model in the model header.","type":"server_error","param":null,"code":"overloaded"}}"#,
            Self::QueueTimeout => br#"{"error":{"message":"No replica of the pool became ready within its queue timeout; retry later.","type":"server_error","param":null,"code":"no_routable_replica"}}"#,
            Self::QueueFull => br#"{"error":{"message":"Too many requests are waiting for the pool's first replica; retry later.","type":"rate_limit_error","param":null,"code":"queue_full"}}"#,
            Self::ConnectFailed => br#"{"error":{"message":"No replica accepted a connection.","type":"server_error","param":null,"code":"bad_gateway"}}"#,
            Self::UpstreamFailed => br#"{"error":{"message":"The replica closed the connection or sent an invalid response.","type":"server_error","param":null,"code":"bad_gateway"}}"#,
            Self::UpstreamTimeout => br#"{"error":{"message":"The replica did not answer in time.","type":"server_error","param":null,"code":"gateway_timeout"}}"#,
            Self::UpstreamWriteTimeout => br#"{"error":{"message":"The replica did not read the request in time.","type":"server_error","param":null,"code":"gateway_timeout"}}"#,
        }
    }

    /// The `code` of its body, for the access log's `reason`.
    pub(crate) fn code(self) -> &'static str {
        let body = self.body();
        let at = body
            .windows(8)
            .position(|w| w == b"\"code\":\"")
            .map_or(body.len(), |i| i + 8);
        let rest = &body[at..];
        let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Whether the client connection must close after this answer: after a
    /// framing error nothing that follows on the connection can be trusted.
    pub(crate) fn closes(self) -> bool {
        !matches!(
            self,
            Self::NoReplica
                | Self::QueueTimeout
                | Self::QueueFull
                | Self::ConnectFailed
                | Self::UpstreamFailed
                | Self::UpstreamTimeout
                | Self::UpstreamWriteTimeout
                | Self::MethodNotAllowed
                | Self::CorsRefused
        )
    }

    /// Extra header lines for this answer.
    pub(crate) fn extra_headers(self) -> &'static [u8] {
        match self {
            // Long enough for an autoscaler or an operator to bring a replica
            // back, short enough that clients retry promptly.
            Self::NoReplica | Self::InspectBusy => b"Retry-After: 1\r\n",
            // A replica is starting: worth a few seconds.
            Self::QueueTimeout | Self::QueueFull => b"Retry-After: 5\r\n",
            Self::MethodNotAllowed => b"Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n",
            _ => b"",
        }
    }
}

/// Why forwarding a request stopped before its response was complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    /// Answer the client with this error (no response byte was sent yet).
    Respond(ErrorKind),
    /// The client went away; close everything.
    ClientGone,
    /// The response head was sent and the replica failed; close the client
    /// connection so the truncation is visible.
    AfterHead,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every answer the proxy makes is in OpenAI's error shape, with a
    /// status the SDKs map: the message, a type, `param`, and a code.
    #[test]
    fn every_error_is_in_openai_shape() {
        let all = [
            ErrorKind::BadRequest,
            ErrorKind::AmbiguousModel,
            ErrorKind::InvalidJson,
            ErrorKind::UnsupportedMediaType,
            ErrorKind::HeadTooLarge,
            ErrorKind::BodyTooLarge,
            ErrorKind::HeadTimeout,
            ErrorKind::BodyTimeout,
            ErrorKind::VersionNotSupported,
            ErrorKind::MethodNotAllowed,
            ErrorKind::NotImplemented,
            ErrorKind::ExpectationFailed,
            ErrorKind::CorsRefused,
            ErrorKind::NoReplica,
            ErrorKind::InspectBusy,
            ErrorKind::QueueTimeout,
            ErrorKind::QueueFull,
            ErrorKind::ConnectFailed,
            ErrorKind::UpstreamFailed,
            ErrorKind::UpstreamTimeout,
            ErrorKind::UpstreamWriteTimeout,
        ];
        for kind in all {
            let body: serde_json::Value =
                serde_json::from_slice(kind.body()).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            let error = &body["error"];
            assert!(
                error["message"].as_str().is_some_and(|m| m.len() > 10),
                "{kind:?}"
            );
            let status: u16 = std::str::from_utf8(&kind.status_line()[9..12])
                .unwrap()
                .parse()
                .unwrap();
            // 501 and 505 are the client's request the proxy does not do.
            let expected_type = match status {
                429 => "rate_limit_error",
                502..=504 => "server_error",
                _ => "invalid_request_error",
            };
            assert_eq!(error["type"], expected_type, "{kind:?}");
            assert!(error.get("param").is_some(), "{kind:?}");
            assert!(error["code"].as_str().is_some(), "{kind:?}");
        }
    }
}
