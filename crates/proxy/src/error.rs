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
    /// No replica can take requests; 503 with `Retry-After`.
    NoReplica,
    /// The worker's share of `limits.inspect_budget_bytes` is held by other
    /// bodies, and this one names its model nowhere else; 503 with
    /// `Retry-After` and close.
    InspectBusy,
    /// Held for an autoscaling pool's first replica past `queue_timeout_ms`;
    /// 503 with `Retry-After`.
    QueueTimeout,
    /// The autoscaling pool already holds `max_queued` requests; 503 with
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
            Self::BadRequest | Self::AmbiguousModel => b"HTTP/1.1 400 Bad Request\r\n",
            Self::HeadTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Self::BodyTooLarge => b"HTTP/1.1 413 Content Too Large\r\n",
            Self::HeadTimeout | Self::BodyTimeout => b"HTTP/1.1 408 Request Timeout\r\n",
            Self::VersionNotSupported => b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
            Self::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\n",
            Self::NotImplemented => b"HTTP/1.1 501 Not Implemented\r\n",
            Self::ExpectationFailed => b"HTTP/1.1 417 Expectation Failed\r\n",
            Self::NoReplica | Self::QueueTimeout | Self::QueueFull | Self::InspectBusy => {
                b"HTTP/1.1 503 Service Unavailable\r\n"
            }
            Self::ConnectFailed | Self::UpstreamFailed => b"HTTP/1.1 502 Bad Gateway\r\n",
            Self::UpstreamTimeout | Self::UpstreamWriteTimeout => {
                b"HTTP/1.1 504 Gateway Timeout\r\n"
            }
        }
    }

    /// A short JSON body that says what happened.
    pub(crate) fn body(self) -> &'static [u8] {
        match self {
            Self::BadRequest => br#"{"error":"bad_request","message":"the request is malformed or its framing is ambiguous"}"#,
            Self::AmbiguousModel => br#"{"error":{"message":"The request body names \"model\" more than once.","type":"invalid_request_error","param":"model","code":"duplicate_model"}}"#,
            Self::HeadTooLarge => br#"{"error":"request_header_fields_too_large","message":"the request head is over the size or field-count limit"}"#,
            Self::BodyTooLarge => br#"{"error":"content_too_large","message":"the request body is over the configured limit"}"#,
            Self::HeadTimeout => br#"{"error":"request_timeout","message":"the request head did not arrive in time"}"#,
            Self::BodyTimeout => br#"{"error":"request_timeout","message":"the request body stalled past the body timeout"}"#,
            Self::VersionNotSupported => br#"{"error":"http_version_not_supported","message":"only HTTP/1.0 and HTTP/1.1 are served"}"#,
            Self::MethodNotAllowed => br#"{"error":"method_not_allowed","message":"CONNECT and TRACE are not served by this proxy"}"#,
            Self::NotImplemented => br#"{"error":"not_implemented","message":"the method or transfer coding is not supported"}"#,
            Self::ExpectationFailed => br#"{"error":"expectation_failed","message":"only Expect: 100-continue is supported"}"#,
            Self::NoReplica => br#"{"error":"no_routable_replica","message":"no replica can take requests right now; retry later"}"#,
            Self::InspectBusy => br#"{"error":"overloaded","message":"too many request bodies are being read for their model right now; retry later, or name the model in the model header"}"#,
            Self::QueueTimeout => br#"{"error":"no_routable_replica","message":"no replica of the pool became ready within its queue timeout; retry later"}"#,
            Self::QueueFull => br#"{"error":"no_routable_replica","message":"too many requests are waiting for the pool's first replica; retry later"}"#,
            Self::ConnectFailed => br#"{"error":"bad_gateway","message":"no replica accepted a connection"}"#,
            Self::UpstreamFailed => br#"{"error":"bad_gateway","message":"the replica closed or sent an invalid response"}"#,
            Self::UpstreamTimeout => br#"{"error":"gateway_timeout","message":"the replica did not answer in time"}"#,
            Self::UpstreamWriteTimeout => br#"{"error":"gateway_timeout","message":"the replica did not read the request in time"}"#,
        }
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
