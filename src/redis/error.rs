//! The Redis tier's error types.
//!
//! Every `Display` says only what its own layer knows; the cause is reached through
//! [`source`](std::error::Error::source), so a report that walks the chain (`anyhow`'s `{:#}`)
//! prints each cause once.

use std::fmt;
use std::time::Duration;

/// Why a codec could not encode or decode a value.
///
/// Transparent: it displays as the codec's own error, and its `source` is that error's source.
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
        self.0.source()
    }
}

/// An error reply from the server for one call (`WRONGTYPE`, `NOPERM`, `OOM`, a script error,
/// ...): the server is up and answered, so it says nothing about the server's health and never
/// opens a [`TieredCache`](crate::tiered::TieredCache)'s circuit breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    code: String,
    detail: String,
}

impl ServerError {
    /// The error code the server sent (`"WRONGTYPE"`, `"NOPERM"`, `"OOM"`, `"ERR"`, ...).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The rest of the server's message.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(&self.code)
        } else {
            write!(f, "{} {}", self.code, self.detail)
        }
    }
}

impl std::error::Error for ServerError {}

/// A configuration mistake: a URL that does not parse, an unusable option. Never transient:
/// retrying cannot fix it. The message names the input (a URL with its password replaced by
/// `***`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// A URL that the client refused, named without its password.
    pub(crate) fn url(url: &str, why: &redis::RedisError) -> Self {
        let why = why.detail().map_or_else(|| why.to_string(), str::to_owned);
        Self(format!(
            "redis URL {:?} is not usable: {why} (expected redis://[user:password@]host[:port][/db])",
            redact_url(url)
        ))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// `url` with the password of its user-info part (`scheme://user:PASSWORD@host`) replaced by
/// `***`. Anything that does not look like a URL with user-info is returned as it is.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://password@host` is how redis-rs reads a bare user-info: a password.
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

/// Why a [`RedisStore`](super::RedisStore) operation failed.
///
/// A stale save is *not* an error (it is [`Saved::Stale`](super::Saved::Stale)). Everything here
/// either changed nothing (malformed input is checked before anything is sent) or, for
/// [`Redis`](Self::Redis), [`Timeout`](Self::Timeout) and [`Server`](Self::Server), may or may
/// not have reached the server: a purge that failed this way must be retried or reported, never
/// assumed done.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// Redis could not be reached or cannot serve right now: connection refused or dropped, an
    /// I/O error, a server that answered `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN` or `LOADING`, or
    /// a cluster redirect (`MOVED`, `ASK`) the client could not follow.
    /// Transient; these are the only failures that open a tiered cache's circuit breaker (with
    /// [`Timeout`](Self::Timeout)).
    Redis(redis::RedisError),
    /// The server did not answer within [`RedisOptions::command_timeout`](super::RedisOptions::command_timeout).
    Timeout(Duration),
    /// The server answered this call with an error (`WRONGTYPE` for a foreign key under the
    /// namespace, `NOPERM`, `OOM` at `maxmemory` with `noeviction`, a script error). Not
    /// transient in the breaker's sense: the server is up, other calls may succeed.
    Server(ServerError),
    /// The lease token is garbled, truncated, or was altered: it was not issued by a `RedisStore`.
    InvalidLease(&'static str),
    /// The lease was issued for another namespace, key or sub-entry.
    ForeignLease,
    /// The value could not be encoded by the codec.
    Encode(CodecError),
    /// A stored value could not be decoded by the codec (written by another program or codec).
    /// Only [`RedisStore::get`](super::RedisStore::get) and
    /// [`get_field`](super::RedisStore::get_field) report it; the lease-taking reads treat such a
    /// value as a miss (see the module docs, *Bad stored data*).
    Decode(CodecError),
    /// The encoded value is larger than [`RedisOptions::max_value_bytes`](super::RedisOptions::max_value_bytes).
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The store's configuration is unusable: a URL that does not parse, an invalid namespace,
    /// TTL or timeout. Never transient.
    Config(ConfigError),
    /// An argument of this call is unusable (for example a zero TTL).
    InvalidInput(String),
    /// A sub-entry's name is not UTF-8 (written by another program); its raw bytes.
    NonUtf8Field(Vec<u8>),
    /// The server answered something the scripts never return (a foreign or tampered key?).
    Protocol(String),
}

impl RedisStoreError {
    /// Whether Redis was unreachable, unavailable or too slow ([`Redis`](Self::Redis),
    /// [`Timeout`](Self::Timeout)): retrying the same call later may succeed. Configuration
    /// mistakes, bad input and the server's error replies ([`Server`](Self::Server)) are not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Redis(_) | Self::Timeout(_))
    }

    /// Whether this is a configuration mistake ([`Config`](Self::Config)).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_))
    }
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(_) => f.write_str("redis is unreachable or unavailable"),
            Self::Timeout(d) => write!(f, "redis did not answer within {d:?}"),
            Self::Server(_) => f.write_str("redis refused the command"),
            Self::InvalidLease(why) => write!(f, "invalid lease token: {why}"),
            Self::ForeignLease => {
                f.write_str("lease rejected: it was issued for another namespace, key or field")
            }
            Self::Encode(_) => f.write_str("could not encode the value"),
            Self::Decode(_) => f.write_str("could not decode the stored value"),
            Self::TooLarge { size, limit } => {
                write!(
                    f,
                    "encoded value is {size} bytes, over the {limit}-byte limit"
                )
            }
            Self::Config(_) => f.write_str("invalid redis store configuration"),
            Self::InvalidInput(why) => write!(f, "invalid input: {why}"),
            Self::NonUtf8Field(raw) => write!(
                f,
                "sub-entry name is not UTF-8: {:?}",
                String::from_utf8_lossy(raw)
            ),
            Self::Protocol(why) => write!(f, "unexpected reply from redis: {why}"),
        }
    }
}

impl std::error::Error for RedisStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // A `redis::RedisError` displays as the error it wraps *and* returns it as its
            // source: skip it in the chain so the cause is printed once.
            Self::Redis(e) => Some(
                std::error::Error::source(e).unwrap_or(e as &(dyn std::error::Error + 'static)),
            ),
            Self::Server(e) => Some(e),
            Self::Encode(e) | Self::Decode(e) => Some(e),
            Self::Config(e) => Some(e),
            _ => None,
        }
    }
}

/// The error codes that mean "the cluster or server cannot serve right now", which count as
/// transport failures. `MOVED` and `ASK` reach us only when the cluster client's own redirect
/// retries ran out (the slot's owner is down or moving): a routing failure, not an answer.
const UNAVAILABLE_CODES: [&str; 6] = [
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MASTERDOWN",
    "LOADING",
    "MOVED",
    "ASK",
];

impl From<redis::RedisError> for RedisStoreError {
    /// Sorts a client error: a server's error reply for this call becomes [`Server`](Self::Server)
    /// (unless it is one of `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`), a client
    /// configuration error becomes [`Config`](Self::Config), everything else (I/O, connection,
    /// cluster routing) [`Redis`](Self::Redis).
    fn from(e: redis::RedisError) -> Self {
        use redis::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidClientConfig => {
                return Self::Config(ConfigError::new(e.to_string()));
            }
            ErrorKind::AuthenticationFailed => {
                return Self::Config(ConfigError::new(format!("authentication failed: {e}")));
            }
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
                return Self::Protocol(e.to_string());
            }
            ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => return Self::Redis(e),
            _ => {}
        }
        match e.code() {
            Some(code) if UNAVAILABLE_CODES.contains(&code) => Self::Redis(e),
            // A script error carries the code of the command that failed inside it (Redis 7).
            Some(code) => Self::Server(ServerError {
                code: code.to_owned(),
                detail: e.detail().unwrap_or_default().to_owned(),
            }),
            None => Self::Redis(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://s3cret@host/"), "redis://***@host/");
        assert_eq!(redact_url("redis://host:6379/"), "redis://host:6379/");
        assert_eq!(redact_url("no scheme"), "no scheme");
        assert_eq!(
            redact_url("rediss://:p@ss@host/?x=@"),
            "rediss://:***@host/?x=@"
        );
    }
}
