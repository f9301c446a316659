//! Wording shared by messages and logs.

/// `n` and its noun, singular or plural: `1 request`, `3 requests`.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular() {
        assert_eq!(super::count(1u32, "replica"), "1 replica");
        assert_eq!(super::count(0u32, "replica"), "0 replicas");
        assert_eq!(super::count(12u64, "request"), "12 requests");
    }
}
