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

use serde::Deserialize;

use crate::budget::Reserved;
use crate::client::{Client, BODY_BUFFER};
use crate::error::{Abort, ErrorKind};
use crate::exchange::{continue_if_expected, Progress};
use crate::h1::body::{Body, Framing};
use crate::h1::request::RequestInfo;

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
    /// The body's top-level `"model"` came first and routes it alone: its
    /// bytes are at this range of `client.request`; what was read stays and
    /// the rest streams, unread.
    ModelFirst(std::ops::Range<usize>),
}

/// Reads the rest of the request body behind the head in `client.request`
/// (which ends at `head_end`) while its payload stays within `limits.max`
/// bytes (the decoded bytes: a chunked body's framing does not count, within
/// a [`framing_allowance`]), holding what it reads against `reserved`. When
/// the body's `"model"` arrives before the rest and `enough` says it alone
/// routes the request, reading stops there. A
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
    enough: impl Fn(&str) -> bool,
) -> Result<Inspected, Abort> {
    let max = limits.max;
    if matches!(info.body, Framing::Length(n) if n > max as u64) {
        return Ok(Inspected::TooLarge);
    }
    let raw_max = max.saturating_add(framing_allowance(max));
    let started = Instant::now();
    let deadline = started + limits.whole;
    let mut scan = ModelScan::default();
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
        if body.is_done() || !within {
            return Ok(if body.is_done() && within {
                Inspected::Whole
            } else {
                Inspected::TooLarge
            });
        }
        // A sized body is its payload: its model may be read before the
        // rest arrives, and when that is all routing needs, the rest streams.
        if matches!(info.body, Framing::Length(_)) {
            if let ModelSoFar::Found(range) = scan.scan(&client.request[head_end..]) {
                let at = head_end + range.start..head_end + range.end;
                let model = std::str::from_utf8(&client.request[at.clone()]).unwrap_or("");
                if enough(model) {
                    return Ok(Inspected::ModelFirst(at));
                }
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

/// What the start of a JSON body says of its top-level `"model"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModelSoFar {
    /// `"model": "..."` at the top level, without escapes: its bytes are
    /// at this range of the input.
    Found(std::ops::Range<usize>),
    /// Not there yet (or an escaped one): read on.
    NotYet,
    /// Not a JSON object: there is none to find.
    Never,
}

/// One scan of a whole input.
#[cfg(test)]
fn model_so_far(input: &[u8]) -> ModelSoFar {
    ModelScan::default().scan(input)
}

/// Scans the start of a JSON body for its top-level `"model"` string, so a
/// large body need not be read whole when its model comes first (as the
/// OpenAI SDKs write it). Strings, numbers and nested values are skipped
/// without being built. The body grows between calls: each call resumes at
/// the first top-level member not yet passed, so a body read in many pieces
/// is scanned once, not once per piece.
#[derive(Debug, Default)]
pub(crate) struct ModelScan {
    /// Where the next top-level member (or its comma) starts; 0 before the
    /// opening brace.
    resume: usize,
    /// The scan's last word once nothing more can change it: the body is
    /// no object, or its model is escaped (left to the whole-body parse).
    settled: Option<ModelSoFar>,
}

impl ModelScan {
    /// Scans `input`, the body so far (the same bytes as before, and more).
    pub(crate) fn scan(&mut self, input: &[u8]) -> ModelSoFar {
        if let Some(settled) = &self.settled {
            return settled.clone();
        }
        let found = self.members(input);
        if matches!(found, ModelSoFar::Never) {
            self.settled = Some(ModelSoFar::Never);
        }
        found
    }

    fn members(&mut self, input: &[u8]) -> ModelSoFar {
        let mut i = self.resume;
        if i == 0 {
            i = skip_ws(input, 0);
            match input.get(i) {
                None => return ModelSoFar::NotYet,
                Some(b'{') => i += 1,
                Some(_) => return ModelSoFar::Never,
            }
            self.resume = i;
        }
        loop {
            i = skip_ws(input, i);
            match input.get(i) {
                None => return ModelSoFar::NotYet,
                Some(b',') => {
                    i += 1;
                    self.resume = i;
                    continue;
                }
                Some(b'"') => {}
                Some(_) => return ModelSoFar::Never,
            }
            let Some(key_end) = string_end(input, i) else {
                return ModelSoFar::NotYet;
            };
            let is_model = &input[i..key_end] == b"\"model\"";
            i = skip_ws(input, key_end);
            match input.get(i) {
                None => return ModelSoFar::NotYet,
                Some(b':') => i = skip_ws(input, i + 1),
                Some(_) => return ModelSoFar::Never,
            }
            if i >= input.len() {
                return ModelSoFar::NotYet;
            }
            if is_model && input[i] == b'"' {
                let Some(end) = string_end(input, i) else {
                    return ModelSoFar::NotYet;
                };
                let value = i + 1..end - 1;
                if input[value.clone()].contains(&b'\\') {
                    // Escaped: left to the whole-body parse.
                    self.settled = Some(ModelSoFar::NotYet);
                    return ModelSoFar::NotYet;
                }
                return ModelSoFar::Found(value);
            }
            let Some(next) = value_end(input, i) else {
                return ModelSoFar::NotYet;
            };
            i = next;
            self.resume = i;
        }
    }
}

fn skip_ws(input: &[u8], mut i: usize) -> usize {
    while input.get(i).is_some_and(|b| b" \t\r\n".contains(b)) {
        i += 1;
    }
    i
}

/// The end (one past the closing quote) of the string starting at `i`.
fn string_end(input: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < input.len() {
        match input[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// The end of the JSON value starting at `i`, nested ones skipped whole.
fn value_end(input: &[u8], i: usize) -> Option<usize> {
    match input[i] {
        b'"' => string_end(input, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < input.len() {
                match input[j] {
                    b'"' => {
                        j = string_end(input, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            // A number or a literal: up to the next separator.
            let j = input[i..].iter().position(|b| b",}] \t\r\n".contains(b))?;
            Some(i + j)
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

/// The parts of an OpenAI-style request body routing looks at; everything
/// else is skipped unparsed.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Parsed<'a> {
    #[serde(borrow, default, deserialize_with = "lenient")]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default, deserialize_with = "lenient")]
    prompt: Option<Prompt<'a>>,
}

#[derive(Debug, Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "lenient")]
    content: Option<Content<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    #[serde(borrow)]
    Text(Cow<'a, str>),
    #[serde(borrow)]
    Parts(Vec<Part<'a>>),
}

#[derive(Debug, Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt<'a> {
    #[serde(borrow)]
    Text(Cow<'a, str>),
    #[serde(borrow)]
    Texts(Vec<Cow<'a, str>>),
    Tokens(Vec<u64>),
}

/// A field of an unexpected type reads as absent rather than failing the
/// whole parse: the replica, not the proxy, judges the request.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(T::deserialize(value).ok())
}

/// What a body says of its model.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyModel<'a> {
    /// A top-level `"model"` string (borrowed from the payload unless it
    /// has escapes).
    Named(Cow<'a, str>),
    /// No `"model"` string (another type, not JSON, not an object).
    Absent,
    /// `"model"` more than once: JSON parsers disagree on which one wins,
    /// so the proxy and the replica could read different models.
    Duplicate,
}

/// The body's top-level `"model"`, reading nothing else: every other field
/// is skipped unparsed, and a model without escapes is borrowed from the
/// payload, so this allocates nothing.
pub(crate) fn model_of(payload: &[u8]) -> BodyModel<'_> {
    match serde_json::from_slice::<ModelOnly<'_>>(payload) {
        Ok(ModelOnly { count: 0, .. }) | Err(_) => BodyModel::Absent,
        Ok(ModelOnly { count: 1, model }) => model.map_or(BodyModel::Absent, BodyModel::Named),
        Ok(_) => BodyModel::Duplicate,
    }
}

/// A top-level object's `"model"` values: the last, and how many there were.
struct ModelOnly<'a> {
    model: Option<Cow<'a, str>>,
    count: usize,
}

impl<'de> Deserialize<'de> for ModelOnly<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ModelOnly<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = ModelOnly {
                    model: None,
                    count: 0,
                };
                while let Some(IsModel(is_model)) = map.next_key()? {
                    if is_model {
                        out.count += 1;
                        out.model = map.next_value::<Lenient<'de>>()?.0;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Whether an object key is `"model"`, decided without allocating.
struct IsModel(bool);

impl<'de> Deserialize<'de> for IsModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IsModel;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IsModel(v == "model"))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// A string value, read with [`lenient_str`].
struct Lenient<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Lenient<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_str(d).map(Lenient)
    }
}

/// A string, borrowed where it can be; any other JSON value reads as absent
/// (skipped without building it), like [`lenient`].
fn lenient_str<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<Cow<'de, str>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(None)
        }
    }
    d.deserialize_any(Visitor)
}

impl<'a> Parsed<'a> {
    /// Parses a JSON body; anything that is not a JSON object gives nothing.
    pub(crate) fn from(payload: &'a [u8]) -> Self {
        serde_json::from_slice(payload).unwrap_or_default()
    }

    /// The text `prefix` routing matches: the chat's roles and contents in
    /// order, a completion's prompt, or else the payload itself.
    pub(crate) fn text(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        if let Some(messages) = &self.messages {
            for m in messages {
                out.extend_from_slice(m.role.as_bytes());
                out.push(0);
                match &m.content {
                    Some(Content::Text(t)) => out.extend_from_slice(t.as_bytes()),
                    Some(Content::Parts(parts)) => {
                        for t in parts.iter().filter_map(|p| p.text.as_deref()) {
                            out.extend_from_slice(t.as_bytes());
                        }
                    }
                    None => {}
                }
                out.push(0);
            }
            return;
        }
        match &self.prompt {
            Some(Prompt::Text(t)) => out.extend_from_slice(t.as_bytes()),
            Some(Prompt::Texts(texts)) => {
                for t in texts {
                    out.extend_from_slice(t.as_bytes());
                    out.push(0);
                }
            }
            Some(Prompt::Tokens(tokens)) => {
                for t in tokens {
                    out.extend_from_slice(&t.to_le_bytes());
                }
            }
            None => out.extend_from_slice(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_and_the_chat_text_are_read() {
        let body = br#"{"model":"llama-3-8b","stream":true,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let parsed = Parsed::from(body);
        assert_eq!(model_of(body), BodyModel::Named("llama-3-8b".into()));
        let mut text = Vec::new();
        parsed.text(body, &mut text);
        assert_eq!(text, b"system\0You are terse.\0user\0Hi\0");
    }

    #[test]
    fn prompts_escapes_and_odd_types() {
        let body = br#"{"model":"a\"b","prompt":"once upon"}"#;
        let parsed = Parsed::from(body);
        assert_eq!(model_of(body), BodyModel::Named("a\"b".into()));
        let mut text = Vec::new();
        parsed.text(body, &mut text);
        assert_eq!(text, b"once upon");
        // A model that is not a string, and a body that is not JSON.
        let body = br#"{"model":42,"input":"x"}"#;
        let parsed = Parsed::from(body);
        assert_eq!(model_of(body), BodyModel::Absent);
        parsed.text(body, &mut text);
        assert_eq!(text, body, "anything else: the body itself");
        assert_eq!(model_of(b"not json"), BodyModel::Absent);
        assert_eq!(model_of(b"[1, 2]"), BodyModel::Absent);
        for odd in [
            &br#"{"model":{"a":[1,{"b":2}]},"x":1}"#[..],
            br#"{"model":[1,"m"]}"#,
            br#"{"model":null}"#,
        ] {
            assert_eq!(
                model_of(odd),
                BodyModel::Absent,
                "{}",
                String::from_utf8_lossy(odd)
            );
        }
        let after = br#"{"messages":[{"role":"user","content":"hi"}],"model":"late"}"#;
        assert_eq!(model_of(after), BodyModel::Named("late".into()));
        // Twice, even with one value: refused, not read as either.
        for twice in [
            &br#"{"model":"a","model":"b"}"#[..],
            br#"{"model":"a","x":{"model":"n"},"model":"a"}"#,
        ] {
            assert_eq!(model_of(twice), BodyModel::Duplicate);
        }
        // A nested "model" is not the top-level one.
        assert_eq!(
            model_of(br#"{"x":{"model":"n"},"model":"a"}"#),
            BodyModel::Named("a".into())
        );
        let parsed = Parsed::from(br#"{"prompt":[1,2]}"#);
        parsed.text(b"", &mut text);
        assert_eq!(text.len(), 16);
    }

    #[test]
    fn the_model_is_found_in_the_start_of_a_body() {
        let body = br#"{"model": "llama", "messages": [{"role": "user", "content": "hi"}]"#;
        let ModelSoFar::Found(range) = model_so_far(body) else {
            panic!("not found");
        };
        assert_eq!(&body[range], b"llama");
        // After other fields, nested values and strings with braces.
        let body = br#" {"stream":true,"n":1.5e3,"x":{"model":"inner","a":["}",{}]},"s":"a\"}","model":"m","#;
        let ModelSoFar::Found(range) = model_so_far(body) else {
            panic!("not found");
        };
        assert_eq!(&body[range], b"m");
        // Not yet: cut anywhere before the value ends.
        let whole = br#"{"prompt":"abc","model":"m"}"#;
        for cut in 0..whole.len() - 2 {
            assert_eq!(model_so_far(&whole[..cut]), ModelSoFar::NotYet, "{cut}");
        }
        assert_eq!(model_so_far(br#"{"model":"a\u0062"}"#), ModelSoFar::NotYet);
        assert_eq!(model_so_far(br#"{"model":42,"#), ModelSoFar::NotYet);
        assert_eq!(model_so_far(b"[1,2"), ModelSoFar::Never);
        // Fed in growing pieces, the scan resumes and finds the same.
        let mut scan = ModelScan::default();
        for cut in 0..whole.len() - 2 {
            assert_eq!(scan.scan(&whole[..cut]), ModelSoFar::NotYet, "{cut}");
        }
        let ModelSoFar::Found(range) = scan.scan(whole) else {
            panic!("not found when resumed");
        };
        assert_eq!(&whole[range], b"m");
        assert!(scan.resume > 1, "it resumes past the members it passed");
        assert_eq!(model_so_far(b"not json"), ModelSoFar::Never);
    }

    #[test]
    fn chunked_bodies_are_read_as_their_payload() {
        let raw = b"7\r\n{\"model\r\n8\r\n\":\"m\"}  \r\n0\r\n\r\n";
        let payload = payload(raw, Framing::Chunked);
        assert_eq!(&*payload, b"{\"model\":\"m\"}  ");
        assert_eq!(model_of(&payload), BodyModel::Named("m".into()));
    }
}
