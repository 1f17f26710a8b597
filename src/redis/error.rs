//! The Redis tier's error type.

use std::fmt;
use std::time::Duration;

/// Why a codec could not encode or decode a value.
#[derive(Debug)]
pub struct CodecError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl CodecError {
    /// Wraps any error raised by a codec.
    pub fn new(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(err.into())
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Why a [`RedisStore`](super::RedisStore) operation failed.
///
/// A stale save is *not* an error (it is [`Saved::Stale`](super::Saved::Stale)). Everything here
/// either changed nothing (malformed input is checked before anything is sent) or, for
/// [`Redis`](Self::Redis) and [`Timeout`](Self::Timeout), may or may not have reached the server:
/// a purge that failed this way must be retried or reported, never assumed done.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The server or the network failed: connection refused or dropped, I/O error, an error
    /// reply such as `OOM` or `WRONGTYPE`, a cluster that is down.
    Redis(redis::RedisError),
    /// The server did not answer within [`RedisOptions::command_timeout`](super::RedisOptions::command_timeout).
    Timeout(Duration),
    /// The lease token is garbled, truncated, or was altered: it was not issued by a `RedisStore`.
    InvalidLease(&'static str),
    /// The lease was issued for another namespace, key or sub-entry.
    ForeignLease,
    /// The value could not be encoded by the codec.
    Encode(CodecError),
    /// A stored value could not be decoded by the codec (written by another program or codec).
    Decode(CodecError),
    /// The encoded value is larger than [`RedisOptions::max_value_bytes`](super::RedisOptions::max_value_bytes).
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The options or arguments are unusable (for example an empty namespace or a zero TTL).
    InvalidInput(String),
    /// The server answered something the scripts never return (a foreign or tampered key?).
    Protocol(String),
}

impl RedisStoreError {
    /// Whether this is a server, network or timeout failure (as opposed to bad input), i.e.
    /// whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Redis(_) | Self::Timeout(_))
    }
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(e) => write!(f, "redis error: {e}"),
            Self::Timeout(d) => write!(f, "redis did not answer within {d:?}"),
            Self::InvalidLease(why) => write!(f, "invalid lease token: {why}"),
            Self::ForeignLease => {
                f.write_str("lease rejected: it was issued for another namespace, key or field")
            }
            Self::Encode(e) => write!(f, "could not encode the value: {e}"),
            Self::Decode(e) => write!(f, "could not decode the stored value: {e}"),
            Self::TooLarge { size, limit } => {
                write!(
                    f,
                    "encoded value is {size} bytes, over the {limit}-byte limit"
                )
            }
            Self::InvalidInput(why) => write!(f, "invalid input: {why}"),
            Self::Protocol(why) => write!(f, "unexpected reply from redis: {why}"),
        }
    }
}

impl std::error::Error for RedisStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Redis(e) => Some(e),
            Self::Encode(e) | Self::Decode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for RedisStoreError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}
