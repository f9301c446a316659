//! The text `prefix` routing matches: a chat's roles and contents in
//! order, or a completion's prompt.

use std::borrow::Cow;

use serde::Deserialize;

use super::model::{skip_ws, string_end, value_end};

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
                m.text(out);
            }
            return;
        }
        match &self.prompt {
            Some(prompt) => prompt.text(out),
            None => out.extend_from_slice(payload),
        }
    }
}

impl Message<'_> {
    /// Appends `role \0 content \0`.
    fn text(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.role.as_bytes());
        out.push(0);
        match &self.content {
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
}

impl Prompt<'_> {
    fn text(&self, out: &mut Vec<u8>) {
        match self {
            Prompt::Text(t) => out.extend_from_slice(t.as_bytes()),
            Prompt::Texts(texts) => {
                for t in texts {
                    out.extend_from_slice(t.as_bytes());
                    out.push(0);
                }
            }
            Prompt::Tokens(tokens) => {
                for t in tokens {
                    out.extend_from_slice(&t.to_le_bytes());
                }
            }
        }
    }
}

/// Reads the start of a body's text while the body is still arriving, so
/// that `prefix` routing need not hold a long body whole: it needs only the
/// first `limit` bytes of the text (`prefix.max_text_bytes`). What it finds
/// is byte for byte the start of what [`Parsed::text`] gives for the whole
/// body, so a request routes the same however much of it was read.
///
/// It looks at the first top-level `"messages"` or `"prompt"` only; a body
/// with its text elsewhere (or with both keys) is read whole. A body that
/// grows is scanned again from its start, but only once it has grown by a
/// quarter, so a long body costs a few scans in all.
#[derive(Debug, Default)]
pub(crate) struct TextScan {
    /// The body length at which the next scan is worth it.
    next_at: usize,
}

impl TextScan {
    /// Puts the first `limit` bytes of the text into `out` (or all of it
    /// when it is shorter and complete) and returns true, when the body so
    /// far holds them; false: read on.
    pub(crate) fn scan(&mut self, input: &[u8], limit: usize, out: &mut Vec<u8>) -> bool {
        if input.len() < self.next_at {
            return false;
        }
        self.next_at = input.len() + input.len() / 4 + 1;
        out.clear();
        let found = text_so_far(input, limit, out).is_some();
        out.truncate(limit);
        found
    }
}

/// The text's first `limit` bytes (into `out`), or `None` when the input
/// does not hold them yet or holds no text this scan reads.
fn text_so_far(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Option<()> {
    let mut i = skip_ws(input, 0);
    if input.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        let (key, at) = next_member(input, i)?;
        i = at;
        match key {
            b"\"messages\"" => return messages_so_far(input, i, limit, out),
            b"\"prompt\"" => return prompt_so_far(input, i, limit, out),
            _ => i = value_end(input, i)?,
        }
    }
}

/// The next member of an object whose members (or the `,` before one)
/// start at `i`: its key, quotes included, and where its value starts;
/// `None` when the input ends first or is not an object's member.
fn next_member(input: &[u8], mut i: usize) -> Option<(&[u8], usize)> {
    loop {
        i = skip_ws(input, i);
        match input.get(i)? {
            b',' => i += 1,
            b'"' => break,
            _ => return None,
        }
    }
    let key_end = string_end(input, i)?;
    let key = &input[i..key_end];
    let colon = skip_ws(input, key_end);
    if input.get(colon)? != &b':' {
        return None;
    }
    let value = skip_ws(input, colon + 1);
    input.get(value)?;
    Some((key, value))
}

/// A `"messages"` array at `i`: each complete message as
/// [`Parsed::text`] writes it, then the last one's role and the start of its
/// content when the content is a string arriving after its role.
fn messages_so_far(input: &[u8], mut i: usize, limit: usize, out: &mut Vec<u8>) -> Option<()> {
    if input[i] != b'[' {
        return None;
    }
    i += 1;
    loop {
        if out.len() >= limit {
            return Some(());
        }
        i = skip_ws(input, i);
        match input.get(i)? {
            b',' => {
                i += 1;
                continue;
            }
            // The whole array: the text is complete.
            b']' => return Some(()),
            b'{' => {}
            // Not a message: the whole-body parse reads no messages.
            _ => return None,
        }
        let Some(end) = value_end(input, i) else {
            return partial_message(input, i, limit, out);
        };
        // A message the whole-body parse would refuse makes it read no
        // messages at all: left to it.
        let message: Message<'_> = serde_json::from_slice(&input[i..end]).ok()?;
        message.text(out);
        i = end;
    }
}

/// A message still arriving at `i`: its role, a NUL, and the start of its
/// string content, when the role came first and that reaches `limit`.
fn partial_message(input: &[u8], mut i: usize, limit: usize, out: &mut Vec<u8>) -> Option<()> {
    let mut role: Option<Cow<'_, str>> = None;
    i += 1;
    loop {
        let (key, at) = next_member(input, i)?;
        i = at;
        match (key, input[i]) {
            (b"\"role\"", b'"') => {
                let end = string_end(input, i)?;
                role = Some(serde_json::from_slice(&input[i..end]).ok()?);
                i = end;
            }
            (b"\"content\"", b'"') => {
                let role = role?;
                let before = out.len();
                out.extend_from_slice(role.as_bytes());
                out.push(0);
                string_start(input, i, out)?;
                if out.len() >= limit {
                    return Some(());
                }
                out.truncate(before);
                return None;
            }
            _ => i = value_end(input, i)?,
        }
    }
}

/// A `"prompt"` at `i`: a string (complete, or its start when that reaches
/// `limit`), or any complete prompt.
fn prompt_so_far(input: &[u8], i: usize, limit: usize, out: &mut Vec<u8>) -> Option<()> {
    if let Some(end) = value_end(input, i) {
        // A prompt the whole-body parse would not read is left to it.
        let prompt: Prompt<'_> = serde_json::from_slice(&input[i..end]).ok()?;
        prompt.text(out);
        return Some(());
    }
    if input[i] != b'"' {
        return None;
    }
    string_start(input, i, out)?;
    (out.len() >= limit).then_some(())
}

/// Appends the decoded start of the JSON string at `i` that the input holds
/// so far: up to its last whole escape and character.
fn string_start(input: &[u8], i: usize, out: &mut Vec<u8>) -> Option<()> {
    let raw = &input[i + 1..];
    // Cut before an escape the input does not hold whole.
    let mut cut = raw.len();
    let mut j = 0;
    while j < raw.len() {
        if raw[j] == b'\\' {
            let len = if raw.get(j + 1) == Some(&b'u') { 6 } else { 2 };
            if j + len > raw.len() {
                cut = j;
                break;
            }
            j += len;
        } else {
            j += 1;
        }
    }
    // ...and before a character cut in half.
    let whole = match std::str::from_utf8(&raw[..cut]) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&raw[..e.valid_up_to()]).ok()?,
    };
    let mut quoted = String::with_capacity(whole.len() + 2);
    quoted.push('"');
    quoted.push_str(whole);
    quoted.push('"');
    // A lone half of a surrogate pair at the cut: wait for the rest.
    let text: String = serde_json::from_str(&quoted).ok()?;
    out.extend_from_slice(text.as_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{model_of, BodyModel};

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
        assert_eq!(model_of(b"not json"), BodyModel::Invalid);
        assert_eq!(
            model_of(br#"{"model": "m", "#),
            BodyModel::Invalid,
            "cut short"
        );
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

    /// Every cut of every body: what the scan finds is the start of the
    /// whole body's text, and a body cut after its first `limit` bytes of
    /// text is enough.
    #[test]
    fn the_start_of_the_text_is_read_before_the_body_ends() {
        let bodies: [&[u8]; 5] = [
            br#"{"model":"m","messages":[{"role":"system","content":"You are terse. \u00e9\n"},{"role":"user","content":"caf\u00e9 \ud83d\ude00 \"quoted\" and more text"}],"tools":[{"x":1}]}"#,
            br#"{"messages":[{"content":[{"type":"text","text":"part one "},{"type":"image_url"},{"text":"two"}],"role":"user"},{"role":"assistant","content":null}],"model":"m"}"#,
            br#"{"stream":true,"prompt":"once upon a time \\ there was a \t tab","model":"m"}"#,
            br#"{"prompt":["a","b"],"model":"m"}"#,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"ünïcødé text that goes on\"}]}".as_bytes(),
        ];
        for body in bodies {
            let mut whole = Vec::new();
            Parsed::from(body).text(body, &mut whole);
            for limit in [1, 5, 9, 20, 1000] {
                let expected = &whole[..whole.len().min(limit)];
                let mut out = Vec::new();
                let mut found_at = None;
                for cut in 0..=body.len() {
                    // A fresh scan each time: no growth rule in the way.
                    if TextScan::default().scan(&body[..cut], limit, &mut out) {
                        assert_eq!(
                            out,
                            expected,
                            "{} cut at {cut}, limit {limit}",
                            String::from_utf8_lossy(body)
                        );
                        found_at.get_or_insert(cut);
                    }
                }
                if expected.len() == limit {
                    assert!(
                        found_at.is_some_and(|at| at < body.len()),
                        "{} with limit {limit}: found only with the whole body",
                        String::from_utf8_lossy(body)
                    );
                }
            }
        }
        // A message the whole-body parse refuses stops the scan (an invalid
        // request's text past the limit is not looked at).
        let odd = br#"{"messages":["odd",{"role":"user","content":"x"}]}"#;
        let mut out = Vec::new();
        assert!(!TextScan::default().scan(odd, 1, &mut out));
        // A growing body is scanned again only once it grew by a quarter.
        let body = br#"{"prompt":"abcdefghijklmnopqrstuvwxyz"}"#;
        let mut scan = TextScan::default();
        let mut out = Vec::new();
        assert!(!scan.scan(&body[..12], 20, &mut out));
        assert!(
            !scan.scan(&body[..14], 20, &mut out),
            "not scanned again yet"
        );
        assert!(scan.scan(&body[..34], 20, &mut out));
        assert_eq!(out, b"abcdefghijklmnopqrst");
    }
}
