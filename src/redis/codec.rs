//! Value codecs: how values become the bytes stored in Redis.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::CodecError;

/// Turns values into bytes and back. Implement it to plug in another format; the built-in
/// [`PostcardCodec`] (compact, fast, the default) and [`JsonCodec`] (readable by other
/// languages) work for every serde type.
///
/// ```
/// use leasecache::redis::{Codec, CodecError};
///
/// /// Stores strings as raw UTF-8.
/// struct Utf8;
///
/// impl Codec<String> for Utf8 {
///     fn encode(&self, v: &String) -> Result<Vec<u8>, CodecError> {
///         Ok(v.as_bytes().to_vec())
///     }
///     fn decode(&self, b: &[u8]) -> Result<String, CodecError> {
///         String::from_utf8(b.to_vec()).map_err(CodecError::new)
///     }
/// }
/// assert_eq!(Utf8.decode(&Utf8.encode(&"hi".to_string()).unwrap()).unwrap(), "hi");
/// ```
pub trait Codec<V>: Send + Sync + 'static {
    /// Encodes a value.
    fn encode(&self, v: &V) -> Result<Vec<u8>, CodecError>;
    /// Decodes bytes produced by [`Codec::encode`] (or by another program using the same format).
    fn decode(&self, b: &[u8]) -> Result<V, CodecError>;
}

/// The default codec: [postcard](https://docs.rs/postcard), a compact binary serde format.
#[derive(Clone, Copy, Debug, Default)]
pub struct PostcardCodec;

impl<V: Serialize + DeserializeOwned> Codec<V> for PostcardCodec {
    fn encode(&self, v: &V) -> Result<Vec<u8>, CodecError> {
        postcard::to_stdvec(v).map_err(CodecError::new)
    }

    fn decode(&self, b: &[u8]) -> Result<V, CodecError> {
        postcard::from_bytes(b).map_err(CodecError::new)
    }
}

/// JSON (via serde_json), for values other languages read and write.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl<V: Serialize + DeserializeOwned> Codec<V> for JsonCodec {
    fn encode(&self, v: &V) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(v).map_err(CodecError::new)
    }

    fn decode(&self, b: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(b).map_err(CodecError::new)
    }
}
