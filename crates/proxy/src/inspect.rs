//! Looking at a request before a replica is picked: which model it names
//! and, for `prefix` routing, the text whose prefix decides the replica.
//!
//! The model comes from the model header (`X-Model` by default) or else the
//! top-level `"model"` of a JSON body. A JSON body is read whole into the
//! request buffer (up to `routing.max_inspect_body_bytes`) only when that
//! is needed: no model header, or a pool that routes by prefix. The bytes
//! read are the ones forwarded, unchanged, and they make the request
//! replayable. Requests without a JSON body never wait here.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use crate::budget::Reserved;
use crate::client::{Client, BODY_BUFFER};
use crate::error::{Abort, ErrorKind};
use crate::exchange::{continue_if_expected, Progress};
use crate::h1::body::{Body, Framing};
use crate::h1::request::RequestInfo;

mod form;
mod model;
mod text;

pub(crate) use form::{model_field, FieldSoFar, FormScan};
pub(crate) use model::{
    model_of, model_token, string_member, BodyModel, ModelKeys, ModelScan, ModelSoFar,
};
pub(crate) use text::{Parsed, TextScan};

/// How much of a chunked body's framing inspection accepts beside `max`
/// payload bytes: chunks of a few KiB cost a few bytes each, while a body
/// of one-byte chunks (six bytes per payload byte) stops being inspected.
fn framing_allowance(max: usize) -> usize {
    max / 2 + 4096
}

/// How far reading a body for its model may go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InspectLimits {
    /// Most payload bytes read (`routing.max_inspect_body_bytes`).
    pub(crate) max: usize,
    /// Longest gap between two reads (`timeouts.body_read_timeout_ms`).
    pub(crate) gap: Duration,
    /// Time for the whole body (`timeouts.request_read_timeout_ms`).
    pub(crate) whole: Duration,
    /// Slowest average arrival after [`RATE_GRACE`]
    /// (`limits.min_body_rate_bytes_per_s`); 0 is off.
    pub(crate) min_rate: u64,
    /// A sized body over `max` is still read up to `max` for what routing
    /// needs at its start (a form's model field before its file); when it
    /// is not there, the body is [`Inspected::TooLarge`].
    pub(crate) start_only: bool,
}

/// How long a body may take before its average rate counts: a client's
/// first packets may come slowly while its connection warms up.
const RATE_GRACE: Duration = Duration::from_secs(1);

/// How reading a body for its model ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inspected {
    /// The whole body is in `client.request`.
    Whole,
    /// It is over the limit; what was read stays and the rest streams.
    TooLarge,
    /// The worker's inspection budget is spent; what was read stays and the
    /// rest streams.
    NoBudget,
    /// The start of the body holds all routing needs (see [`Early`]): what
    /// was read stays and the rest streams, unread.
    Early(Early),
}

/// What routing took from the start of a body whose rest streams unread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Early {
    /// The body's top-level `"model"`, at this range of the payload (none
    /// when a header named the model, or when the model routes nothing).
    pub(crate) model: Option<std::ops::Range<usize>>,
    /// The first bytes of the text `prefix` routing needs were found (they
    /// are where the caller's check put them).
    pub(crate) text: bool,
    /// The hash of the pool's JSON affinity key, when the start of the body
    /// holds it.
    pub(crate) affinity: Option<u64>,
}

/// Reads the rest of the request body behind the head in `client.request`
/// (which ends at `head_end`) while its payload stays within `limits.max`
/// bytes (the decoded bytes: a chunked body's framing does not count, within
/// a [`framing_allowance`]), holding what it reads against `reserved`. When
/// `early`, shown a sized body's payload so far, finds all that routing
/// needs in it (the model, the start of the text), reading stops there. A
/// body that trickles (past the whole-body time, or under the minimum rate)
/// is answered 408: memory held for inspection is never pinned by a slow
/// client.
// The request's parts, its limits, what it holds, and when to stop: each a
// different owner's, so a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_body(
    client: &mut Client,
    info: &RequestInfo,
    body: &mut Body,
    head_end: usize,
    limits: InspectLimits,
    reserved: &mut Reserved,
    progress: &mut Progress,
    mut early: impl FnMut(&[u8]) -> Option<Early>,
) -> Result<Inspected, Abort> {
    let max = limits.max;
    let sized = matches!(info.body, Framing::Length(_));
    if matches!(info.body, Framing::Length(n) if n > max as u64) && !limits.start_only {
        return Ok(Inspected::TooLarge);
    }
    let raw_max = max.saturating_add(framing_allowance(max));
    let started = Instant::now();
    let deadline = started + limits.whole;
    loop {
        let have = client.request.len() - head_end;
        client.keep_body(body, (raw_max + 1).saturating_sub(have))?;
        // What is held, reserved as it grows: a body whose model comes first
        // holds only what was read of it.
        let held = client.request.len() - head_end;
        if !reserved.grow_to(held) {
            return Ok(Inspected::NoBudget);
        }
        let within = body.payload_len() <= max as u64 && held <= raw_max;
        if !within && sized && limits.start_only {
            if let Some(found) = early(&client.request[head_end..]) {
                return Ok(Inspected::Early(found));
            }
        }
        if body.is_done() || !within {
            return Ok(if body.is_done() && within {
                Inspected::Whole
            } else {
                Inspected::TooLarge
            });
        }
        // A sized body is its payload: what routing needs may be read before
        // the rest arrives, and then the rest streams.
        if sized {
            if let Some(found) = early(&client.request[head_end..]) {
                return Ok(Inspected::Early(found));
            }
        }
        let elapsed = started.elapsed();
        let too_slow = limits.min_rate > 0
            && elapsed > RATE_GRACE
            && (body.payload_len() as f64) < limits.min_rate as f64 * elapsed.as_secs_f64();
        let left = deadline.saturating_duration_since(Instant::now());
        if too_slow || left.is_zero() {
            return Err(Abort::Respond(ErrorKind::BodyTimeout));
        }
        continue_if_expected(info, client, body, progress).await?;
        match monoio::time::timeout(limits.gap.min(left), client.fill(BODY_BUFFER)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(Abort::ClientGone),
            Err(_) => return Err(Abort::Respond(ErrorKind::BodyTimeout)),
        }
    }
}

/// The body's payload: as it is, or de-chunked.
pub(crate) fn payload(raw: &[u8], framing: Framing) -> Cow<'_, [u8]> {
    if framing != Framing::Chunked {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut framer = Body::new(Framing::Chunked);
    let _ = framer.take(raw, |range| out.extend_from_slice(&raw[range]));
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_read_as_their_payload() {
        let raw = b"7\r\n{\"model\r\n8\r\n\":\"m\"}  \r\n0\r\n\r\n";
        let payload = payload(raw, Framing::Chunked);
        assert_eq!(&*payload, b"{\"model\":\"m\"}  ");
        assert_eq!(model_of(&payload), BodyModel::Named("m".into()));
    }
}
