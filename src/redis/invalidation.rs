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
    }
}
