//! Small helpers every layer may use: identifiers, hex, panic messages.

/// True for `[a-z0-9_-]+`, at most 64 bytes: device ids, sensor names, label ids, topic levels.
pub fn is_slug(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// A path from the configuration: absolute as it is, relative against the configuration file's folder `base`.
pub fn resolve_path(base: &std::path::Path, p: &std::path::Path) -> std::path::PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The message of a caught panic.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lower_case_ids_of_at_most_64_bytes() {
        assert!(is_slug("cam0"));
        assert!(is_slug("a_b-c"));
        assert!(!is_slug(""));
        assert!(!is_slug("Cam0"));
        assert!(!is_slug("a b"));
        assert!(!is_slug(&"a".repeat(65)));
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
