//! A `multipart/form-data` body's `model` field (OpenAI's audio
//! transcriptions and translations): found in the start of a body still
//! arriving, so the audio file after it streams unread.
//!
//! ```text
//! --BOUNDARY\r\n
//! Content-Disposition: form-data; name="model"\r\n
//! \r\n
//! whisper-1\r\n            <- the value: up to the CRLF before the next delimiter
//! --BOUNDARY\r\n
//! Content-Disposition: form-data; name="file"; filename="a.wav"\r\n
//! ...
//! --BOUNDARY--\r\n
//! ```

use std::ops::Range;

/// What the start of a form says of its `model` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldSoFar {
    /// The value is at this range of the input.
    Found(Range<usize>),
    /// Not there yet: read on.
    NotYet,
    /// The form ended (or is malformed) without one.
    Never,
}

/// Longest part head read (its `Content-Disposition` and type).
const MAX_PART_HEAD: usize = 4096;

/// Scans a form's start for its `model` field; resumable as the body
/// grows: parts already passed are not scanned again.
#[derive(Debug, Default)]
pub(crate) struct FormScan {
    /// Where the next part's delimiter starts.
    resume: usize,
}

impl FormScan {
    /// Scans `input`, the body so far (the same bytes as before, and more),
    /// for the field of a form delimited by `boundary`.
    pub(crate) fn scan(&mut self, input: &[u8], boundary: &[u8]) -> FieldSoFar {
        let mut delimiter = Vec::with_capacity(boundary.len() + 4);
        delimiter.extend_from_slice(b"\r\n--");
        delimiter.extend_from_slice(boundary);
        loop {
            // The first delimiter may open the body without a CRLF before it.
            let at = self.resume;
            let Some(rest) = input.get(at..) else {
                return FieldSoFar::NotYet;
            };
            let opening = if at == 0 && rest.starts_with(&delimiter[2..]) {
                delimiter.len() - 2
            } else if rest.len() < delimiter.len() {
                return FieldSoFar::NotYet;
            } else if rest.starts_with(&delimiter) {
                delimiter.len()
            } else {
                return FieldSoFar::Never;
            };
            let after = at + opening;
            let Some(two) = input.get(after..after + 2) else {
                return FieldSoFar::NotYet;
            };
            match two {
                b"--" => return FieldSoFar::Never,
                b"\r\n" => {}
                _ => return FieldSoFar::Never,
            }
            let head_start = after + 2;
            let Some(head_len) = find(&input[head_start..], b"\r\n\r\n") else {
                return if input.len() - head_start > MAX_PART_HEAD {
                    FieldSoFar::Never
                } else {
                    FieldSoFar::NotYet
                };
            };
            let value_start = head_start + head_len + 4;
            let is_model = names_model(&input[head_start..head_start + head_len]);
            let Some(value_len) = find(&input[value_start..], &delimiter) else {
                return FieldSoFar::NotYet;
            };
            let value_end = value_start + value_len;
            if is_model {
                return FieldSoFar::Found(value_start..value_end);
            }
            self.resume = value_end;
        }
    }
}

/// Whether a part's head says `Content-Disposition: form-data; name="model"`.
fn names_model(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-disposition")
        {
            return false;
        }
        line[colon + 1..]
            .split(|&b| b == b';')
            .skip(1)
            .any(|param| {
                let param = param.trim_ascii();
                param.len() > 5
                    && param[..5].eq_ignore_ascii_case(b"name=")
                    && matches!(&param[5..], b"\"model\"" | b"model")
            })
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A whole form's `model` value (its range), if it has one.
pub(crate) fn model_field(payload: &[u8], boundary: &[u8]) -> Option<Range<usize>> {
    match FormScan::default().scan(payload, boundary) {
        FieldSoFar::Found(range) => Some(range),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--Xy\r\n--XyZ\r\ncontent-disposition: form-data; name=model\r\n\r\nwhisper-1\r\n--XyZ--\r\n";

    #[test]
    fn the_model_field_is_found_after_other_parts() {
        let range = model_field(FORM, b"XyZ").unwrap();
        assert_eq!(&FORM[range], b"whisper-1");
        // A near-delimiter inside a part's data does not end it.
        assert_eq!(model_field(FORM, b"Xy"), None);
    }

    #[test]
    fn a_form_arriving_in_pieces_is_scanned_once_through() {
        let mut scan = FormScan::default();
        for end in 0..FORM.len() {
            match scan.scan(&FORM[..end], b"XyZ") {
                FieldSoFar::NotYet => {}
                FieldSoFar::Found(range) => {
                    assert_eq!(&FORM[range], b"whisper-1");
                    // Found once its value's end is seen.
                    assert!(end >= FORM.len() - 9, "{end}");
                    return;
                }
                FieldSoFar::Never => panic!("at {end}"),
            }
        }
        panic!("never found");
    }

    #[test]
    fn forms_without_the_field_or_malformed_say_never() {
        let none = b"--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\r\n--b--\r\n";
        assert_eq!(FormScan::default().scan(none, b"b"), FieldSoFar::Never);
        assert_eq!(
            FormScan::default().scan(b"not a form", b"b"),
            FieldSoFar::Never
        );
        // name="model_x" is another field.
        let other = b"--b\r\nContent-Disposition: form-data; name=\"model_x\"\r\n\r\nm\r\n--b--";
        assert_eq!(model_field(other, b"b"), None);
    }
}
