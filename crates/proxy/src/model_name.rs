//! A request's model name, held without allocating: the header's value (or
//! the body's `"model"`) is copied out of the request buffer into an inline
//! array, so routing by model costs nothing on the heap per request.

use inferlb_core::pool::MAX_ALIAS_LEN;

/// A model name as a request gave it.
// Inline on purpose: boxing the large variant is the allocation avoided.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum ModelName {
    /// Up to the longest name or alias a pool may have.
    Inline {
        len: u16,
        bytes: [u8; MAX_ALIAS_LEN],
    },
    /// Longer than any pool's name: it can only be answered 404, so the
    /// heap is fine.
    Long(String),
}

impl ModelName {
    /// The name from a request's bytes (invalid UTF-8 replaced, as the
    /// 404's message shows it).
    pub(crate) fn new(raw: &[u8]) -> Self {
        match std::str::from_utf8(raw) {
            Ok(text) if text.len() <= MAX_ALIAS_LEN => {
                let mut bytes = [0u8; MAX_ALIAS_LEN];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Self::Inline {
                    len: text.len() as u16,
                    bytes,
                }
            }
            _ => Self::Long(String::from_utf8_lossy(raw).into_owned()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Only whole UTF-8 strings are stored inline.
            Self::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Self::Long(text) => text,
        }
    }
}

impl std::fmt::Debug for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_inline_up_to_the_longest_alias() {
        for name in ["llama", "meta-llama/Meta-Llama-3-8B-Instruct", ""] {
            let model = ModelName::new(name.as_bytes());
            assert!(matches!(model, ModelName::Inline { .. }));
            assert_eq!(model.as_str(), name);
        }
        let longest = "m".repeat(MAX_ALIAS_LEN);
        assert!(matches!(
            ModelName::new(longest.as_bytes()),
            ModelName::Inline { .. }
        ));
        let long = "m".repeat(MAX_ALIAS_LEN + 1);
        assert_eq!(ModelName::new(long.as_bytes()).as_str(), long);
        assert_eq!(ModelName::new(b"a\xffb").as_str(), "a\u{fffd}b");
    }
}
