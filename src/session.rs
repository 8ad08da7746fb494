//! Sessions and their portable tokens.
//!
//! A [`Session`] tracks the causal progress of one user or request chain: the
//! highest commit point it has written or read, and the versions of the keys
//! it touched most recently. Its [`SessionToken`] travels between services as
//! a compact string (for example in an HTTP header) and only moves forward.
//!
//! ```
//! use quorate::{Scope, SessionToken};
//!
//! let scope = Scope::new("orders-db")?;
//! let token = SessionToken::new(scope.clone());
//! let text = token.encode();
//! let back = SessionToken::decode(&text, &scope)?;
//! assert_eq!(back, token);
//!
//! let other = Scope::new("billing-db")?;
//! assert!(SessionToken::decode(&text, &other).is_err());
//! # Ok::<(), quorate::TokenError>(())
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::record::{Point, Version};

/// The format version written by this release.
pub const TOKEN_FORMAT: u8 = 1;
/// The longest encoded token accepted, in bytes of text.
pub const MAX_TOKEN_LEN: usize = 512;
/// How many per-key versions a token keeps; older ones fold into its point.
pub const MAX_TOKEN_KEYS: usize = 16;
/// The longest scope name.
pub const MAX_SCOPE_LEN: usize = 64;

const FLAG_POINT: u8 = 0b01;
const FLAG_SIGNED: u8 = 0b10;
#[cfg(feature = "signed-tokens")]
const MAC_LEN: usize = 16;

/// What a token's progress refers to: one cluster or database.
///
/// 1–64 printable ASCII characters without spaces.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

impl Scope {
    /// Validates a scope name.
    pub fn new(name: &str) -> Result<Scope, TokenError> {
        if name.is_empty()
            || name.len() > MAX_SCOPE_LEN
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(TokenError::InvalidScope(
                name.chars().take(MAX_SCOPE_LEN + 1).collect(),
            ));
        }
        Ok(Scope(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An equal scope with its own allocation (and reference count).
    pub(crate) fn unshared(&self) -> Scope {
        Scope(Arc::from(&*self.0))
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a session token could not be used.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text is longer than [`MAX_TOKEN_LEN`].
    #[error("session token too long: {len} bytes (at most {MAX_TOKEN_LEN})")]
    Oversize {
        /// The text's length.
        len: usize,
    },
    /// The text is not a well-formed token.
    #[error("garbled session token: {0}")]
    Garbled(&'static str),
    /// The token was written by a newer or unknown format.
    #[error("unknown session token format version {0}")]
    UnknownVersion(u8),
    /// The token belongs to another cluster or database.
    #[error("session token is for scope {found:?}, expected {expected:?}")]
    WrongScope {
        /// This client's scope.
        expected: String,
        /// The token's scope.
        found: String,
    },
    /// The token's signature does not match.
    #[error("session token signature does not match")]
    BadSignature,
    /// A signature is required but the token has none.
    #[error("session token is not signed, and this client requires signed tokens")]
    Unsigned,
    /// A scope name is empty, too long, or has spaces or control characters.
    #[error("invalid scope {0:?}: use 1-64 printable ASCII characters without spaces")]
    InvalidScope(String),
}

/// The portable causal progress of a session.
///
/// It holds the highest commit point the session has written or observed,
/// and the versions of up to [`MAX_TOKEN_KEYS`] keys it touched last (for
/// backends that order writes per key, such as DynamoDB). It only moves
/// forward: [`SessionToken::merge`] never lowers anything.
///
/// Every observation the client records carries the point it was made at
/// (a write's commit point, a read's read point), and the point moves to it
/// before the key's version is recorded. A key that leaves the token is
/// therefore already folded into the point: a replica that covers the point
/// shows that key at least at the version the session saw, so the session's
/// guarantees hold for any number of keys.
///
/// Its text form (base64url, versioned) travels between services; decoding
/// checks the scope and refuses anything malformed with a typed error:
///
/// ```
/// use quorate::{Scope, SessionToken, TokenError};
///
/// let scope = Scope::new("orders-cluster")?;
/// let token = SessionToken::new(scope.clone());
/// let text = token.encode();
/// assert_eq!(SessionToken::decode(&text, &scope)?, token);
///
/// let other = Scope::new("billing-cluster")?;
/// assert!(matches!(SessionToken::decode(&text, &other), Err(TokenError::WrongScope { .. })));
/// assert!(SessionToken::decode("not a token", &scope).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionToken {
    scope: Scope,
    point: Option<Point>,
    /// `(key hash, version)`, least recently advanced first.
    keys: Keys,
}

/// Up to [`MAX_TOKEN_KEYS`] `(key hash, version)` pairs, stored inline: a
/// new session allocates nothing for them.
#[derive(Clone, Copy, Debug)]
struct Keys {
    len: u8,
    items: [(u64, Version); MAX_TOKEN_KEYS],
}

impl Keys {
    const EMPTY: Keys = Keys {
        len: 0,
        items: [(0, Version(0)); MAX_TOKEN_KEYS],
    };

    fn as_slice(&self) -> &[(u64, Version)] {
        &self.items[..usize::from(self.len)]
    }

    fn len(&self) -> usize {
        usize::from(self.len)
    }

    fn position(&self, h: u64) -> Option<usize> {
        self.as_slice().iter().position(|(k, _)| *k == h)
    }

    fn remove(&mut self, i: usize) -> (u64, Version) {
        let len = self.len();
        let item = self.items[i];
        self.items.copy_within(i + 1..len, i);
        self.len -= 1;
        item
    }

    /// Appends, dropping the oldest entry when full.
    fn push(&mut self, item: (u64, Version)) {
        if self.len() == MAX_TOKEN_KEYS {
            self.remove(0);
        }
        self.items[self.len()] = item;
        self.len += 1;
    }
}

impl PartialEq for Keys {
    fn eq(&self, other: &Keys) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Keys {}

impl SessionToken {
    /// An empty token: no progress yet.
    pub fn new(scope: Scope) -> SessionToken {
        SessionToken {
            scope,
            point: None,
            keys: Keys::EMPTY,
        }
    }

    /// The scope this token belongs to.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The highest commit point the session has seen.
    pub fn point(&self) -> Option<Point> {
        self.point
    }

    /// The version of `key` the session has seen, if the token still tracks it.
    pub fn version_of(&self, key: &str) -> Option<Version> {
        self.version_of_hash(key_hash(key))
    }

    fn version_of_hash(&self, h: u64) -> Option<Version> {
        self.keys.position(h).map(|i| self.keys.items[i].1)
    }

    /// Moves the point forward (never back).
    pub fn advance_point(&mut self, point: Point) {
        if self.point.is_none_or(|p| p < point) {
            self.point = Some(point);
        }
    }

    /// Records that the session has seen `version` of `key` (never lowers it).
    pub fn advance_key(&mut self, key: &str, version: Version) {
        self.advance_hash(key_hash(key), version);
    }

    fn advance_hash(&mut self, h: u64, version: Version) {
        match self.keys.position(h) {
            Some(i) => {
                let (_, old) = self.keys.remove(i);
                self.keys.push((h, old.max(version)));
            }
            None => self.keys.push((h, version)),
        }
    }

    /// Merges another token of the same scope: the result is at least as far
    /// as both. It keeps the most recently advanced keys of both tokens,
    /// taken alternately from each (a key in both keeps the higher version);
    /// the others are covered by the merged point.
    pub fn merge(&mut self, other: &SessionToken) -> Result<(), TokenError> {
        if other.scope != self.scope {
            return Err(TokenError::WrongScope {
                expected: self.scope.to_string(),
                found: other.scope.to_string(),
            });
        }
        if let Some(p) = other.point {
            self.advance_point(p);
        }
        let (a, b) = (self.keys, other.keys);
        let version = |h: u64| {
            let of = |k: &Keys| k.position(h).map(|i| k.items[i].1);
            of(&a).max(of(&b))
        };
        // Newest first, alternating between the two tokens.
        let mut newest: Vec<u64> = Vec::with_capacity(MAX_TOKEN_KEYS);
        let (mut i, mut j) = (a.len(), b.len());
        while newest.len() < MAX_TOKEN_KEYS && (i > 0 || j > 0) {
            for (n, keys) in [(&mut i, &a), (&mut j, &b)] {
                if *n > 0 && newest.len() < MAX_TOKEN_KEYS {
                    *n -= 1;
                    let h = keys.items[*n].0;
                    if !newest.contains(&h) {
                        newest.push(h);
                    }
                }
            }
        }
        let mut merged = Keys::EMPTY;
        for &h in newest.iter().rev() {
            if let Some(v) = version(h) {
                merged.push((h, v));
            }
        }
        self.keys = merged;
        Ok(())
    }

    fn to_bytes(&self, signed: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(TOKEN_FORMAT);
        let mut flags = 0;
        if self.point.is_some() {
            flags |= FLAG_POINT;
        }
        if signed {
            flags |= FLAG_SIGNED;
        }
        out.push(flags);
        out.push(self.scope.0.len() as u8);
        out.extend_from_slice(self.scope.0.as_bytes());
        if let Some(p) = self.point {
            put_varint(&mut out, p.wall);
            put_varint(&mut out, u64::from(p.logical));
        }
        out.push(self.keys.len() as u8);
        for (h, v) in self.keys.as_slice() {
            out.extend_from_slice(&h.to_le_bytes());
            put_varint(&mut out, v.0);
        }
        out
    }

    /// The token as compact base64url text (unsigned).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_bytes(false))
    }

    /// Decodes a token and checks it belongs to `scope`. Never panics.
    pub fn decode(text: &str, scope: &Scope) -> Result<SessionToken, TokenError> {
        let (token, _signed) = Self::parse(text, scope)?;
        Ok(token)
    }

    fn parse(text: &str, scope: &Scope) -> Result<(SessionToken, Option<SignedBody>), TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Oversize { len: text.len() });
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| TokenError::Garbled("not base64url"))?;
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        let version = r.byte()?;
        if version != TOKEN_FORMAT {
            return Err(TokenError::UnknownVersion(version));
        }
        let flags = r.byte()?;
        if flags & !(FLAG_POINT | FLAG_SIGNED) != 0 {
            return Err(TokenError::Garbled("unknown flags"));
        }
        let scope_len = usize::from(r.byte()?);
        let found = std::str::from_utf8(r.take(scope_len)?)
            .map_err(|_| TokenError::Garbled("scope is not UTF-8"))?;
        let found = Scope::new(found).map_err(|_| TokenError::Garbled("invalid scope"))?;
        if &found != scope {
            return Err(TokenError::WrongScope {
                expected: scope.to_string(),
                found: found.to_string(),
            });
        }
        let point = if flags & FLAG_POINT != 0 {
            let wall = r.varint()?;
            let logical = u32::try_from(r.varint()?)
                .map_err(|_| TokenError::Garbled("logical clock overflow"))?;
            Some(Point::hlc(wall, logical))
        } else {
            None
        };
        let count = usize::from(r.byte()?);
        if count > MAX_TOKEN_KEYS {
            return Err(TokenError::Garbled("too many keys"));
        }
        let mut keys = Keys::EMPTY;
        for _ in 0..count {
            let h = u64::from_le_bytes(
                r.take(8)?
                    .try_into()
                    .map_err(|_| TokenError::Garbled("truncated"))?,
            );
            let v = Version(r.varint()?);
            if v.0 == 0 || keys.position(h).is_some() {
                return Err(TokenError::Garbled("invalid key entry"));
            }
            keys.push((h, v));
        }
        let body_len = r.at;
        let signature = if flags & FLAG_SIGNED != 0 {
            #[cfg(feature = "signed-tokens")]
            {
                r.take(MAC_LEN)?;
            }
            #[cfg(not(feature = "signed-tokens"))]
            {
                r.take(16)?;
            }
            Some((bytes.clone(), body_len))
        } else {
            None
        };
        if r.at != bytes.len() {
            return Err(TokenError::Garbled("trailing bytes"));
        }
        Ok((
            SessionToken {
                scope: found,
                point,
                keys,
            },
            signature,
        ))
    }
}

/// A secret for signing session tokens (HMAC-SHA256, truncated to 128 bits),
/// so that a forged token cannot force long waits or escalations.
#[cfg(feature = "signed-tokens")]
#[derive(Clone)]
pub struct SigningKey(Arc<[u8]>);

#[cfg(feature = "signed-tokens")]
impl SigningKey {
    /// A key of at least 16 bytes.
    pub fn new(secret: &[u8]) -> Result<SigningKey, TokenError> {
        if secret.len() < 16 {
            return Err(TokenError::Garbled("signing key shorter than 16 bytes"));
        }
        Ok(SigningKey(Arc::from(secret)))
    }

    fn hmac(&self, body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::{KeyInit, Mac};
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts any key length");
        m.update(body);
        m
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        use hmac::Mac;
        let full = self.hmac(body).finalize().into_bytes();
        let mut out = [0; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Whether `tag` is the MAC of `body`, compared in constant time.
    fn verify(&self, body: &[u8], tag: &[u8]) -> bool {
        use hmac::Mac;
        tag.len() == MAC_LEN && self.hmac(body).verify_truncated_left(tag).is_ok()
    }
}

#[cfg(feature = "signed-tokens")]
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

#[cfg(feature = "signed-tokens")]
impl SessionToken {
    /// The token as base64url text with an HMAC signature.
    pub fn encode_signed(&self, key: &SigningKey) -> String {
        let mut bytes = self.to_bytes(true);
        let mac = key.mac(&bytes);
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a signed token, checking its signature before anything else:
    /// text that is not signed with `key` gets [`TokenError::BadSignature`]
    /// (or [`TokenError::Unsigned`], [`TokenError::Oversize`]), never a
    /// detail of its content such as its scope.
    pub fn decode_signed(
        text: &str,
        scope: &Scope,
        key: &SigningKey,
    ) -> Result<SessionToken, TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Oversize { len: text.len() });
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| TokenError::BadSignature)?;
        let flags = bytes.get(1).copied().unwrap_or(0);
        if flags & FLAG_SIGNED == 0 {
            return Err(TokenError::Unsigned);
        }
        let body = bytes
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(TokenError::BadSignature)?;
        if !key.verify(&bytes[..body], &bytes[body..]) {
            return Err(TokenError::BadSignature);
        }
        let (token, signature) = Self::parse(text, scope)?;
        signature.ok_or(TokenError::Unsigned)?;
        Ok(token)
    }
}

/// A signed token's bytes and the length of the part the signature covers.
type SignedBody = (Vec<u8>, usize);

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, TokenError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or(TokenError::Garbled("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(TokenError::Garbled("truncated"))?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or(TokenError::Garbled("truncated"))?;
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, TokenError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(TokenError::Garbled("varint overflow"));
            }
            value |= part << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(TokenError::Garbled("non-canonical varint"));
                }
                return Ok(value);
            }
        }
        Err(TokenError::Garbled("varint overflow"))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// FNV-1a: stable across processes and releases, unlike `std`'s hasher.
pub(crate) fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The causal context of one user or request chain.
///
/// Cloning a `Session` shares it: every clone sees the progress of the
/// others. Create one with [`Client::session`](crate::Client::session) or
/// resume one from a token another service sent with
/// [`Client::resume_session`](crate::Client::resume_session).
///
/// ```
/// use quorate::sim::{Sim, SimConfig};
/// use quorate::{Client, ClientConfig, Precondition, ReadPolicy, WriteOptions};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), quorate::Error> {
/// let sim = Sim::new(SimConfig::new(["eu", "us"])?)?;
/// let client = Client::new(sim.at("us")?, ClientConfig::default())?;
/// let session = client.session();
/// let handler = session.clone(); // shares the progress, not a copy of it
/// let c = client
///     .write(&handler, "cart:9", "book".into(), Precondition::IfAbsent, &WriteOptions::default())
///     .await?;
/// // What one clone wrote, every clone reads (or better).
/// let read = client.read(&session, "cart:9", ReadPolicy::Session).await?;
/// assert_eq!(read.version(), Some(c.version));
/// assert!(session.token().version_of("cart:9") >= Some(c.version));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Session {
    token: Arc<Mutex<SessionToken>>,
}

/// What a session requires of a read of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SessionFloor {
    /// The read must reflect at least this point…
    pub point: Option<Point>,
    /// …and at least this version of the key.
    pub version: Option<Version>,
}

impl Session {
    /// A session with no progress yet, its token built in place.
    pub(crate) fn empty(scope: Scope) -> Session {
        Session {
            token: Arc::new(Mutex::new(SessionToken::new(scope))),
        }
    }

    /// A session continuing from `token`.
    pub fn from_token(token: SessionToken) -> Session {
        Session {
            token: Arc::new(Mutex::new(token)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionToken> {
        // The token is valid after any panic of a holder: every mutation is
        // a single monotone step.
        self.token.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the current token.
    pub fn token(&self) -> SessionToken {
        self.lock().clone()
    }

    /// The current token as text, for passing to another service.
    pub fn encode(&self) -> String {
        self.lock().encode()
    }

    /// Merges progress made elsewhere (for example a token returned by
    /// another service).
    pub fn merge(&self, other: &SessionToken) -> Result<(), TokenError> {
        self.lock().merge(other)
    }

    /// What a read of `key` must reflect.
    pub fn floor(&self, key: &str) -> SessionFloor {
        self.floor_of(key_hash(key))
    }

    /// [`Session::floor`] of the key whose hash is `h`.
    pub(crate) fn floor_of(&self, h: u64) -> SessionFloor {
        let t = self.lock();
        SessionFloor {
            point: t.point,
            version: t.version_of_hash(h),
        }
    }

    /// The highest commit point the session has seen.
    pub fn point(&self) -> Option<Point> {
        self.lock().point
    }

    /// Records a read that reflected `point` (a query: no one key).
    pub fn observe_point(&self, point: Option<Point>) {
        if let Some(p) = point {
            self.lock().advance_point(p);
        }
    }

    /// Records a write or read the session observed.
    pub fn observe(&self, key: &str, version: Option<Version>, point: Option<Point>) {
        self.observe_of(key_hash(key), version, point);
    }

    /// [`Session::observe`] of the key whose hash is `h`.
    pub(crate) fn observe_of(&self, h: u64, version: Option<Version>, point: Option<Point>) {
        let mut t = self.lock();
        if let Some(p) = point {
            t.advance_point(p);
        }
        if let Some(v) = version {
            t.advance_hash(h, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scope() -> Scope {
        Scope::new("cluster-1").unwrap()
    }

    #[test]
    fn merge_only_moves_forward() {
        let mut a = SessionToken::new(scope());
        a.advance_point(Point::hlc(10, 0));
        a.advance_key("k", Version(5));
        let mut b = SessionToken::new(scope());
        b.advance_point(Point::hlc(7, 3));
        b.advance_key("k", Version(3));
        b.advance_key("j", Version(1));
        a.merge(&b).unwrap();
        assert_eq!(a.point(), Some(Point::hlc(10, 0)));
        assert_eq!(a.version_of("k"), Some(Version(5)));
        assert_eq!(a.version_of("j"), Some(Version(1)));
        let other = SessionToken::new(Scope::new("cluster-2").unwrap());
        assert!(matches!(
            a.merge(&other),
            Err(TokenError::WrongScope { .. })
        ));
    }

    #[test]
    fn merge_keeps_the_newest_keys_of_both() {
        let mut a = SessionToken::new(scope());
        let mut b = SessionToken::new(scope());
        for i in 0..MAX_TOKEN_KEYS as u64 {
            a.advance_key(&format!("a-{i}"), Version(i + 1));
            b.advance_key(&format!("b-{i}"), Version(i + 1));
        }
        a.advance_key("both", Version(7));
        b.advance_key("both", Version(3));
        a.merge(&b).unwrap();
        assert_eq!(a.keys.len(), MAX_TOKEN_KEYS);
        assert_eq!(a.version_of("both"), Some(Version(7)), "the higher version");
        assert_eq!(
            a.version_of("a-15"),
            Some(Version(16)),
            "the receiver's newest key stays"
        );
        assert_eq!(a.version_of("b-15"), Some(Version(16)), "and the other's");
        let from_a = (0..16)
            .filter(|i| a.version_of(&format!("a-{i}")).is_some())
            .count();
        let from_b = (0..16)
            .filter(|i| a.version_of(&format!("b-{i}")).is_some())
            .count();
        assert!(from_a >= 7 && from_b >= 7, "{from_a} and {from_b}");
        // Merging is idempotent.
        let once = a.clone();
        a.merge(&once).unwrap();
        assert_eq!(a, once);
    }

    #[test]
    fn keeps_a_bounded_number_of_keys() {
        let mut t = SessionToken::new(scope());
        for i in 0..40 {
            t.advance_key(&format!("key-{i}"), Version(i + 1));
            t.advance_point(Point::hlc(i, 0));
        }
        assert_eq!(t.keys.len(), MAX_TOKEN_KEYS);
        assert_eq!(t.version_of("key-39"), Some(Version(40)));
        assert_eq!(t.version_of("key-0"), None);
        assert!(t.encode().len() <= MAX_TOKEN_LEN);
    }

    #[test]
    fn decode_distinguishes_errors() {
        let s = scope();
        assert_eq!(
            SessionToken::decode(&"A".repeat(600), &s),
            Err(TokenError::Oversize { len: 600 })
        );
        assert_eq!(
            SessionToken::decode("!!!", &s),
            Err(TokenError::Garbled("not base64url"))
        );
        assert_eq!(
            SessionToken::decode("", &s),
            Err(TokenError::Garbled("truncated"))
        );
        let mut bytes = SessionToken::new(s.clone()).to_bytes(false);
        bytes[0] = 9;
        assert_eq!(
            SessionToken::decode(&URL_SAFE_NO_PAD.encode(&bytes), &s),
            Err(TokenError::UnknownVersion(9))
        );
        let foreign = SessionToken::new(Scope::new("other").unwrap()).encode();
        assert!(matches!(
            SessionToken::decode(&foreign, &s),
            Err(TokenError::WrongScope { .. })
        ));
        let mut bytes = SessionToken::new(s.clone()).to_bytes(false);
        bytes.push(0);
        assert_eq!(
            SessionToken::decode(&URL_SAFE_NO_PAD.encode(&bytes), &s),
            Err(TokenError::Garbled("trailing bytes"))
        );
    }

    #[test]
    fn a_full_token_fits_the_cap() {
        let s = Scope::new(&"s".repeat(MAX_SCOPE_LEN)).unwrap();
        let mut t = SessionToken::new(s.clone());
        t.advance_point(Point::hlc(u64::MAX, u32::MAX));
        for i in 0..MAX_TOKEN_KEYS {
            t.advance_key(&i.to_string(), Version(u64::MAX));
        }
        let text = t.encode();
        assert!(text.len() <= MAX_TOKEN_LEN, "{}", text.len());
        assert_eq!(SessionToken::decode(&text, &s).unwrap(), t);
    }

    #[cfg(feature = "signed-tokens")]
    #[test]
    fn signatures() {
        let key = SigningKey::new(b"0123456789abcdef-secret").unwrap();
        let mut t = SessionToken::new(scope());
        t.advance_point(Point::hlc(99, 1));
        let text = t.encode_signed(&key);
        assert!(text.len() <= MAX_TOKEN_LEN);
        assert_eq!(
            SessionToken::decode_signed(&text, &scope(), &key).unwrap(),
            t
        );
        assert_eq!(
            SessionToken::decode_signed(&t.encode(), &scope(), &key),
            Err(TokenError::Unsigned)
        );
        let other = SigningKey::new(b"another-secret-of-16").unwrap();
        assert_eq!(
            SessionToken::decode_signed(&text, &scope(), &other),
            Err(TokenError::BadSignature)
        );
        // Content is not looked at before the signature: a token of
        // another scope, signed with another key, says only that.
        let foreign = SessionToken::new(Scope::new("other-cluster").unwrap());
        assert_eq!(
            SessionToken::decode_signed(&foreign.encode_signed(&other), &scope(), &key),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            SessionToken::decode_signed("!!!", &scope(), &key),
            Err(TokenError::BadSignature)
        );
        // A forged point with the old signature fails.
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        let at = 3 + scope().as_str().len();
        bytes[at] ^= 0x01;
        assert_eq!(
            SessionToken::decode_signed(&URL_SAFE_NO_PAD.encode(&bytes), &scope(), &key),
            Err(TokenError::BadSignature)
        );
    }

    fn arb_token() -> impl Strategy<Value = SessionToken> {
        (
            proptest::option::of((any::<u64>(), any::<u32>())),
            proptest::collection::vec(("[a-z]{1,8}", 1u64..), 0..24),
        )
            .prop_map(|(point, keys)| {
                let mut t = SessionToken::new(Scope::new("cluster-1").unwrap());
                if let Some((w, l)) = point {
                    t.advance_point(Point::hlc(w, l));
                }
                for (k, v) in keys {
                    t.advance_key(&k, Version(v));
                }
                t
            })
    }

    proptest! {
        #[test]
        fn round_trips(t in arb_token()) {
            let text = t.encode();
            prop_assert!(text.len() <= MAX_TOKEN_LEN);
            prop_assert_eq!(SessionToken::decode(&text, &scope()).unwrap(), t);
        }

        #[test]
        fn merge_is_monotone(a in arb_token(), b in arb_token()) {
            let mut m = a.clone();
            m.merge(&b).unwrap();
            prop_assert!(m.point() >= a.point() && m.point() >= b.point());
            prop_assert!(m.keys.len() <= MAX_TOKEN_KEYS);
            for &(h, v) in m.keys.as_slice() {
                let before = a.version_of_hash(h).max(b.version_of_hash(h));
                prop_assert_eq!(Some(v), before, "a kept key keeps its highest version");
            }
            // The newest key of each side survives.
            for t in [&a, &b] {
                if let Some(&(h, v)) = t.keys.as_slice().last() {
                    prop_assert!(m.version_of_hash(h) >= Some(v));
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,700}") {
            let _ = SessionToken::decode(&s, &scope());
        }

        #[cfg(feature = "signed-tokens")]
        #[test]
        fn unsigned_or_forged_input_learns_nothing(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            flip in any::<usize>(),
        ) {
            let key = SigningKey::new(b"0123456789abcdef-secret").unwrap();
            // Random bytes, with the signed flag set or not: never a panic,
            // never an answer that describes the content.
            let text = URL_SAFE_NO_PAD.encode(&bytes);
            let r = SessionToken::decode_signed(&text, &scope(), &key);
            prop_assert!(matches!(
                r,
                Err(TokenError::BadSignature | TokenError::Unsigned | TokenError::Oversize { .. })
            ), "{r:?}");
            // A genuine token with one bit flipped anywhere.
            let mut t = SessionToken::new(scope());
            t.advance_point(Point::hlc(42, 1));
            let mut signed = URL_SAFE_NO_PAD.decode(t.encode_signed(&key)).unwrap();
            let i = flip % signed.len();
            signed[i] ^= 1 << (flip % 8);
            let r = SessionToken::decode_signed(&URL_SAFE_NO_PAD.encode(&signed), &scope(), &key);
            prop_assert!(matches!(r, Err(TokenError::BadSignature | TokenError::Unsigned)), "{r:?}");
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = SessionToken::decode(&URL_SAFE_NO_PAD.encode(&bytes), &scope());
        }

        #[test]
        fn mutated_tokens_never_panic(t in arb_token(), at in any::<usize>(), bit in 0u8..8) {
            let mut bytes = t.to_bytes(false);
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = SessionToken::decode(&URL_SAFE_NO_PAD.encode(&bytes), &scope());
        }
    }
}
