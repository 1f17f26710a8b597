//! Redis leases and their portable token form.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::error::RedisStoreError;

/// Permission to save one entry of a [`RedisStore`](super::RedisStore), captured **before**
/// reading the source.
///
/// It names its namespace, key and (for sub-entries) field, and carries the server time it was
/// issued at and a *proof*: a digest the server computed from the key's minted generation
/// marker, the field and the issue time. The marker itself never leaves the server. A save
/// under the lease lands only if the server, recomputing the proof from the key's *current*
/// marker, the field saved to and the issue time presented, gets the same digest, and the lease
/// is younger than [`RedisOptions::max_lease_age`](super::RedisOptions::max_lease_age) and not
/// issued in the future. Presenting it for another namespace, key or field is an error
/// ([`RedisStoreError::ForeignLease`]) before anything is sent.
///
/// Cheap to clone, `Send`, `Sync` and `'static`. [`to_token`](Self::to_token) and
/// [`from_token`](Self::from_token) carry it across processes (for example to a worker that
/// reads the source).
///
/// # What a token proves
///
/// - Its checksum catches garbling and truncation; it is not a signature.
/// - The proof is a MAC keyed by the marker, a value only the server knows (server time plus a
///   random 64-bit nonce): whoever holds a token can save *that* entry (this key, this field)
///   while no write has fenced the lease and its age allows, and nothing else. Rebinding it to
///   another field, moving its issue time (to defeat the maximum age) or crafting a token for a
///   key one holds no lease on makes the save [`Stale`](super::Saved::Stale). The digest is
///   SHA-1 in an envelope (`sha1(marker, field, time, marker)`), which Redis's Lua offers.
/// - With a [lease secret](super::RedisOptions::lease_secret) the store also signs every lease
///   it issues (HMAC-SHA256 over everything the token says) and refuses, before anything is
///   sent, a lease without a valid signature ([`RedisStoreError::InvalidLease`]): a token
///   altered in any way, or issued by a store with another secret, never reaches Redis. Use it
///   when tokens travel through less trusted hands; it adds ~1 µs per lease.
/// - It does not prove *who* loaded the value: a token holder may save any value for its entry
///   within the lease. Hand tokens only to workers trusted to read the source faithfully.
/// - [`Debug`](fmt::Debug) does not print the proof (it is a bearer credential); the token does.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisLease(Arc<Inner>);

#[derive(Clone, PartialEq, Eq, Hash)]
struct Inner {
    namespace: String,
    key: String,
    field: Option<String>,
    generation: String,
    issued_s: u64,
    issued_us: u64,
    /// HMAC-SHA256 of the token body under the issuing store's lease secret, if it has one.
    mac: Option<[u8; MAC_LEN]>,
}

/// Length of a lease MAC (HMAC-SHA256).
const MAC_LEN: usize = 32;

/// Format 2: the token carries the proof, not the marker (format 1 tokens are refused).
const PREFIX: &str = "lcr2.";
/// Longest token accepted by [`RedisLease::from_token`] (keys and namespaces are bounded by it).
const MAX_TOKEN: usize = 1 << 20;

impl RedisLease {
    pub(crate) fn new(
        namespace: &str,
        key: &str,
        field: Option<&str>,
        generation: String,
        issued_s: u64,
        issued_us: u64,
    ) -> Self {
        Self(Arc::new(Inner {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            field: field.map(str::to_owned),
            generation,
            issued_s,
            issued_us,
            mac: None,
        }))
    }

    /// This lease, authenticated under `secret` (see [`RedisOptions::lease_secret`](super::RedisOptions::lease_secret)).
    pub(crate) fn signed(self, secret: &[u8]) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.0);
        inner.mac = Some(mac(secret, &inner.body()).finalize().into_bytes().into());
        Self(Arc::new(inner))
    }

    /// Whether this lease carries a MAC made with `secret` over its current contents.
    pub(crate) fn verify(&self, secret: &[u8]) -> bool {
        match &self.0.mac {
            // Constant-time comparison.
            Some(tag) => mac(secret, &self.0.body()).verify_slice(tag).is_ok(),
            None => false,
        }
    }

    /// Whether this lease was issued for `field` of `key` in `namespace`.
    pub(crate) fn is_for(&self, namespace: &str, key: &str, field: Option<&str>) -> bool {
        self.0.namespace == namespace && self.0.key == key && self.0.field.as_deref() == field
    }

    /// The lease's proof (see *What a token proves*): an opaque string that differs between
    /// leases issued under different markers. A bearer credential: do not log it.
    pub fn generation(&self) -> &str {
        &self.0.generation
    }

    pub(crate) fn issued(&self) -> (u64, u64) {
        (self.0.issued_s, self.0.issued_us)
    }

    /// The key this lease was issued for.
    pub fn key(&self) -> &str {
        &self.0.key
    }

    /// The sub-entry (field) this lease was issued for, if any.
    pub fn field(&self) -> Option<&str> {
        self.0.field.as_deref()
    }

    /// The namespace this lease was issued in.
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// A printable (ASCII, URL-safe) token that [`from_token`](Self::from_token) turns back into
    /// an equal lease.
    pub fn to_token(&self) -> String {
        let mut body = self.0.body();
        match &self.0.mac {
            None => body.push(0),
            Some(tag) => {
                body.push(1);
                body.extend_from_slice(tag);
            }
        }
        body.extend_from_slice(&fnv1a(&body).to_be_bytes());
        let mut token = String::with_capacity(PREFIX.len() + body.len() * 2);
        token.push_str(PREFIX);
        for b in body {
            token.push(char::from(HEX[usize::from(b >> 4)]));
            token.push(char::from(HEX[usize::from(b & 15)]));
        }
        token
    }

    /// Parses a token made by [`to_token`](Self::to_token). A garbled, truncated or altered
    /// token is [`RedisStoreError::InvalidLease`].
    pub fn from_token(token: &str) -> Result<RedisLease, RedisStoreError> {
        let bad = RedisStoreError::InvalidLease;
        if token.len() > MAX_TOKEN {
            return Err(bad("token too long"));
        }
        let hex = token.strip_prefix(PREFIX).ok_or(bad("unknown format"))?;
        if hex.len() % 2 != 0 {
            return Err(bad("odd length"));
        }
        let body = hex
            .as_bytes()
            .chunks(2)
            .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or(bad("not hexadecimal"))?;
        let (body, sum) = body
            .split_at_checked(body.len().wrapping_sub(8))
            .ok_or(bad("truncated"))?;
        if fnv1a(body).to_be_bytes() != sum {
            return Err(bad("checksum mismatch"));
        }
        let mut r = Reader(body);
        let namespace = r.string().ok_or(bad("truncated namespace"))?;
        let key = r.string().ok_or(bad("truncated key"))?;
        let field = match r.take(1).ok_or(bad("truncated field"))? {
            [0] => None,
            [1] => Some(r.string().ok_or(bad("truncated field"))?),
            _ => return Err(bad("bad field tag")),
        };
        let generation = r.string().ok_or(bad("truncated generation"))?;
        let issued_s = r.u64().ok_or(bad("truncated time"))?;
        let issued_us = r.u64().ok_or(bad("truncated time"))?;
        let mac = match r.take(1).ok_or(bad("truncated signature"))? {
            [0] => None,
            [1] => Some(
                r.take(MAC_LEN)
                    .and_then(|t| t.try_into().ok())
                    .ok_or(bad("truncated signature"))?,
            ),
            _ => return Err(bad("bad signature tag")),
        };
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        if generation.is_empty() {
            return Err(bad("empty generation"));
        }
        Ok(Self(Arc::new(Inner {
            namespace,
            key,
            field,
            generation,
            issued_s,
            issued_us,
            mac,
        })))
    }
}

impl Inner {
    /// Everything a token says about the lease, in token order (the MAC covers exactly this).
    fn body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put(&mut body, self.namespace.as_bytes());
        put(&mut body, self.key.as_bytes());
        match &self.field {
            None => body.push(0),
            Some(f) => {
                body.push(1);
                put(&mut body, f.as_bytes());
            }
        }
        put(&mut body, self.generation.as_bytes());
        body.extend_from_slice(&self.issued_s.to_be_bytes());
        body.extend_from_slice(&self.issued_us.to_be_bytes());
        body
    }
}

fn mac(secret: &[u8], body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    m.update(body);
    m
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("namespace", &self.0.namespace)
            .field("key", &self.0.key)
            .field("field", &self.0.field)
            .field("issued_s", &self.0.issued_s)
            .field("signed", &self.0.mac.is_some())
            .finish_non_exhaustive()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    // Token length is bounded by MAX_TOKEN on the way in; on the way out a key over 4 GiB
    // cannot have been issued a lease by Redis (512 MB key limit).
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        let bytes = self.take(usize::try_from(len).ok()?)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_tamper_detection() {
        let lease = RedisLease::new("ns", "k:1", Some("f"), "17.5.abc".into(), 17, 5);
        let token = lease.to_token();
        assert_eq!(RedisLease::from_token(&token).unwrap(), lease);
        let plain = RedisLease::new("ns", "k", None, "1.2.3".into(), 1, 2);
        assert_eq!(RedisLease::from_token(&plain.to_token()).unwrap(), plain);

        // Every single-character change is caught.
        for i in PREFIX.len()..token.len() {
            let mut t = token.clone().into_bytes();
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            let t = String::from_utf8(t).unwrap();
            assert!(matches!(
                RedisLease::from_token(&t),
                Err(RedisStoreError::InvalidLease(_))
            ));
        }
        for bad in [
            "",
            "lcr1.",
            "lcr1.zz",
            "nope",
            &token[..token.len() - 2],
            "lcr1.0",
        ] {
            assert!(matches!(
                RedisLease::from_token(bad),
                Err(RedisStoreError::InvalidLease(_))
            ));
        }
    }
}
