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

/// The first byte of every stored value: leasecache's value format 1, followed by the store's
/// two-byte (big-endian) [`value_version`](super::RedisOptions::value_version), then the codec's
/// bytes.
pub(crate) const FORMAT_V1: u8 = 0xA1;
/// Bytes before the codec's output in a stored value.
pub(crate) const HEADER_LEN: usize = 3;

/// The header of a stored value of schema version `version`.
pub(crate) fn header(version: u16) -> [u8; HEADER_LEN] {
    let [hi, lo] = version.to_be_bytes();
    [FORMAT_V1, hi, lo]
}

/// The codec's bytes of a stored value, if its header says format 1 and schema `version`.
pub(crate) fn strip_header(stored: &[u8], version: u16) -> Result<&[u8], CodecError> {
    match stored.split_first_chunk::<HEADER_LEN>() {
        Some((h, body)) if *h == header(version) => Ok(body),
        Some(([FORMAT_V1, hi, lo], _)) => Err(CodecError::new(format!(
            "stored value has schema version {}, this store reads version {version}",
            u16::from_be_bytes([*hi, *lo])
        ))),
        _ => Err(CodecError::new(
            "stored value has no leasecache header (written by another program?)",
        )),
    }
}
