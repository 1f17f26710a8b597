//! The invalidation feed: what fencing scripts publish and how subscribers decode it.

/// A message on a namespace's [invalidation channel](super::RedisStore::invalidation_channel).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Invalidation {
    /// Key `.0` was purged, inserted or had a sub-entry purged (payload `b"K" + key`).
    Key(String),
    /// The namespace was flushed (payload `b"F"`).
    Flush,
}

impl Invalidation {
    /// Decodes a pub/sub payload; `None` if it is not one of ours.
    ///
    /// ```
    /// use leasecache::redis::Invalidation;
    ///
    /// assert_eq!(Invalidation::parse(b"Kuser:1"), Some(Invalidation::Key("user:1".into())));
    /// assert_eq!(Invalidation::parse(b"F"), Some(Invalidation::Flush));
    /// assert_eq!(Invalidation::parse(b"?"), None);
    /// ```
    pub fn parse(payload: &[u8]) -> Option<Invalidation> {
        match payload {
            [b'F'] => Some(Self::Flush),
            [b'K', key @ ..] => std::str::from_utf8(key)
                .ok()
                .map(|k| Self::Key(k.to_owned())),
            _ => None,
        }
    }

    /// Decodes a message of a tiered cache's coherence channel that carries an invalidation:
    /// `b"#" + sequence + b" " + payload`, where the sequence is the one the write advanced.
    /// `None` for anything else (acknowledgements, tokens, garbage).
    ///
    /// ```
    /// use leasecache::redis::Invalidation;
    ///
    /// assert_eq!(
    ///     Invalidation::parse_sequenced(b"#42 Kuser:1"),
    ///     Some((42, Invalidation::Key("user:1".into())))
    /// );
    /// assert_eq!(Invalidation::parse_sequenced(b"#7 F"), Some((7, Invalidation::Flush)));
    /// assert_eq!(Invalidation::parse_sequenced(b"Kuser:1"), None);
    /// ```
    pub fn parse_sequenced(payload: &[u8]) -> Option<(u64, Invalidation)> {
        let rest = payload.strip_prefix(b"#")?;
        let space = rest.iter().position(|&b| b == b' ')?;
        let (digits, body) = (&rest[..space], &rest[space + 1..]);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let seq = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some((seq, Self::parse(body)?))
    }

    pub(crate) fn key_payload(key: &str) -> Vec<u8> {
        let mut p = Vec::with_capacity(key.len() + 1);
        p.push(b'K');
        p.extend_from_slice(key.as_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_payloads_round_trip() {
        let p = Invalidation::key_payload("a:b");
        assert_eq!(
            Invalidation::parse(&p),
            Some(Invalidation::Key("a:b".into()))
        );
        assert_eq!(Invalidation::parse(b"F"), Some(Invalidation::Flush));
        assert_eq!(Invalidation::parse(b"FF"), None);
        assert_eq!(Invalidation::parse(b""), None);
        assert_eq!(Invalidation::parse(b"K\xff"), None);
        assert_eq!(
            Invalidation::parse_sequenced(b"#18446744073709551615 F"),
            Some((u64::MAX, Invalidation::Flush))
        );
        for bad in [
            &b"#"[..],
            b"# F",
            b"#1F",
            b"#x F",
            b"#1 ?",
            b"#18446744073709551616 F",
        ] {
            assert_eq!(Invalidation::parse_sequenced(bad), None, "{bad:?}");
        }
    }
}
