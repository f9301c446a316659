//! A body's top-level `"model"`: found in the start of a body still
//! arriving ([`ModelScan`]), or read from a whole one ([`model_of`]).

use std::borrow::Cow;

use serde::Deserialize;

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
    /// An escaped model's string, quotes included.
    escaped: Option<std::ops::Range<usize>>,
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
                    self.escaped = Some(i..end);
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

/// Where a whole body's top-level `"model"` string is, quotes included,
/// escaped or not: the bytes an alias rewrite replaces.
pub(crate) fn model_token(payload: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut scan = ModelScan::default();
    match scan.scan(payload) {
        ModelSoFar::Found(value) => Some(value.start - 1..value.end + 1),
        _ => scan.escaped,
    }
}

/// A top-level string member's value as written (between its quotes,
/// escapes kept), when `input` (a JSON object, whole or its start) has one
/// by that name before it ends.
pub(crate) fn string_member<'a>(input: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut i = skip_ws(input, 0);
    if input.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(input, i);
        match input.get(i)? {
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(input, i)?;
        let wanted = &input[i + 1..key_end - 1] == name.as_bytes();
        i = skip_ws(input, key_end);
        if *input.get(i)? != b':' {
            return None;
        }
        i = skip_ws(input, i + 1);
        if wanted && *input.get(i)? == b'"' {
            let end = string_end(input, i)?;
            return Some(&input[i + 1..end - 1]);
        }
        input.get(i)?;
        i = value_end(input, i)?;
    }
}

pub(super) fn skip_ws(input: &[u8], mut i: usize) -> usize {
    while input.get(i).is_some_and(|b| b" \t\r\n".contains(b)) {
        i += 1;
    }
    i
}

/// The end (one past the closing quote) of the string starting at `i`.
pub(super) fn string_end(input: &[u8], i: usize) -> Option<usize> {
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
pub(super) fn value_end(input: &[u8], i: usize) -> Option<usize> {
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
    /// Not JSON at all (a syntax error, or cut short).
    Invalid,
}

/// The body's top-level `"model"`, reading nothing else: every other field
/// is skipped unparsed, and a model without escapes is borrowed from the
/// payload, so this allocates nothing.
pub(crate) fn model_of(payload: &[u8]) -> BodyModel<'_> {
    match serde_json::from_slice::<ModelOnly<'_>>(payload) {
        Err(e)
            if matches!(
                e.classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            ) =>
        {
            BodyModel::Invalid
        }
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

/// Counts a JSON body's top-level `"model"` keys as the body streams past.
/// A request routed on its first `"model"` before the rest of its body
/// arrived ([`ModelScan`]) has the rest fed through this on its way to the
/// replica, so a second `"model"` (which parsers resolve differently) is
/// caught before the bytes that hold it are sent, and refused with 400 as a
/// body read whole is.
#[derive(Debug, Default, Clone)]
pub(crate) struct ModelKeys {
    depth: u32,
    /// The body is an object (not an array or a scalar).
    object: bool,
    in_string: bool,
    escaped: bool,
    /// The string being read is a top-level key.
    in_key: bool,
    /// The next top-level string is a key.
    key_next: bool,
    /// The key's raw bytes, while they fit: `"model"` written with every
    /// character escaped is 30 bytes.
    key: [u8; KEY_BYTES],
    key_len: usize,
    count: u32,
}

const KEY_BYTES: usize = 32;

impl ModelKeys {
    /// Feeds the next bytes of the payload; true once a second top-level
    /// `"model"` key went past.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string && !self.in_key && !self.escaped {
                // Inside a value's string only its end matters.
                match bytes[i..].iter().position(|&b| b == b'"' || b == b'\\') {
                    Some(j) => i += j,
                    None => break,
                }
            }
            let b = bytes[i];
            i += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.in_key {
                        self.end_key();
                    }
                    continue;
                }
                if self.in_key {
                    if let Some(slot) = self.key.get_mut(self.key_len) {
                        *slot = b;
                    }
                    self.key_len += 1;
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    self.in_key = self.depth == 1 && self.key_next;
                    self.key_next = false;
                    self.key_len = 0;
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth == 1 {
                        self.object = b == b'{';
                        self.key_next = self.object;
                    }
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b',' if self.depth == 1 && self.object => self.key_next = true,
                _ => {}
            }
        }
        self.count > 1
    }

    fn end_key(&mut self) {
        self.in_key = false;
        if self.key_len > KEY_BYTES {
            return;
        }
        let raw = &self.key[..self.key_len];
        let is_model = if raw.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            serde_json::from_slice::<Cow<'_, str>>(&quoted).is_ok_and(|k| k == "model")
        } else {
            raw == b"model"
        };
        self.count += u32::from(is_model);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_level_string_member_is_found_past_nested_values() {
        let body = br#"{"messages": [{"role": "user", "content": "hi", "user": "x"}], "n": 1, "user" : "alice-7"}"#;
        assert_eq!(string_member(body, "user"), Some(&b"alice-7"[..]));
        assert_eq!(string_member(body, "model"), None);
        assert_eq!(string_member(br#"{"user": 7}"#, "user"), None);
        assert_eq!(string_member(br#"{"messages": [1, 2"#, "user"), None);
        assert_eq!(string_member(br#"["user", "x"]"#, "user"), None);
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
    fn a_second_model_is_seen_as_the_body_streams() {
        let twice = br#"{"model":"a","x":{"model":"n","s":"\"model\":"},"list":["model"],"mod\u0065l":"b"}"#;
        let once = br#"{"model":"a","x":{"model":"n","s":"\",\"model\":"},"list":["model",{"model":1}],"models":"b"}"#;
        for (body, dup) in [(&twice[..], true), (&once[..], false)] {
            // Whole, byte by byte, and in pieces of 7: the same answer.
            assert_eq!(ModelKeys::default().feed(body), dup);
            let mut keys = ModelKeys::default();
            let mut seen = false;
            for b in body.chunks(1) {
                seen |= keys.feed(b);
            }
            assert_eq!(seen, dup);
            let mut keys = ModelKeys::default();
            assert_eq!(body.chunks(7).any(|c| keys.feed(c)), dup);
            assert_eq!(model_of(body) == BodyModel::Duplicate, dup);
        }
        assert!(!ModelKeys::default().feed(br#"["model","model"]"#));
    }
}
