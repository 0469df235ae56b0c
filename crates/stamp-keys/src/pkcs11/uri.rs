//! PKCS#11 URIs (RFC 7512): `pkcs11:token=site;object=site-issuing-ca`.
//!
//! stamp accepts the path attributes that identify a token and an object (`token`, `manufacturer`,
//! `model`, `serial`, `object`, `id`, `type`) and refuses everything else, in particular the query
//! attributes `pin-value`, `pin-source` and `module-path`: a URI is stored in a database and printed,
//! so it never carries a secret, and the module and PIN come from configuration.

use std::fmt;

/// Longest URI accepted.
const MAX_URI: usize = 1024;

/// Why a PKCS#11 URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// Not a `pkcs11:` URI.
    #[error("not a pkcs11: URI")]
    Scheme,
    /// Longer than stamp accepts.
    #[error("PKCS#11 URI longer than {MAX_URI} characters")]
    TooLong,
    /// A query component (`?pin-value=...`, `?module-path=...`).
    #[error(
        "PKCS#11 URI query attributes (pin-value, pin-source, module-path, ...) are not accepted: \
         the module and PIN come from --pkcs11-module / --pkcs11-pin-file"
    )]
    Query,
    /// An attribute without `=`.
    #[error("PKCS#11 URI attribute {0:?} has no value")]
    NoValue(String),
    /// An attribute stamp does not support.
    #[error("PKCS#11 URI attribute {0:?} is not supported (use token, manufacturer, model, serial, object, id, type)")]
    Unsupported(String),
    /// An attribute given twice.
    #[error("PKCS#11 URI attribute {0:?} appears twice")]
    Duplicate(&'static str),
    /// A character that must be percent-encoded, or a bad `%XX`.
    #[error("PKCS#11 URI attribute {0:?} has an invalid character or percent-encoding")]
    Encoding(&'static str),
    /// A text attribute that is not UTF-8 once decoded.
    #[error("PKCS#11 URI attribute {0:?} is not UTF-8")]
    Utf8(&'static str),
    /// `type=` other than the known object classes.
    #[error("PKCS#11 URI type {0:?} is not one of public, private, cert, secret-key, data")]
    Type(String),
    /// The URI names no token.
    #[error("PKCS#11 URI names no token (add token=LABEL)")]
    NoToken,
    /// A key reference that names no object.
    #[error("PKCS#11 URI names no key (add object=LABEL)")]
    NoObject,
    /// A store target that names an object.
    #[error("a key store is a token (pkcs11:token=LABEL); object, id and type name a key, not a store")]
    ObjectInTarget,
}

/// The object class named by `type=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectType {
    /// `public`
    Public,
    /// `private`
    Private,
    /// `cert`
    Cert,
    /// `secret-key`
    SecretKey,
    /// `data`
    Data,
}

impl ObjectType {
    fn name(self) -> &'static str {
        match self {
            ObjectType::Public => "public",
            ObjectType::Private => "private",
            ObjectType::Cert => "cert",
            ObjectType::SecretKey => "secret-key",
            ObjectType::Data => "data",
        }
    }
}

/// A parsed PKCS#11 URI: which token, and optionally which object on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label (CKA_LABEL of the token, trailing spaces ignored).
    pub token: Option<String>,
    /// `manufacturer=`: the token's manufacturer ID.
    pub manufacturer: Option<String>,
    /// `model=`: the token's model.
    pub model: Option<String>,
    /// `serial=`: the token's serial number.
    pub serial: Option<String>,
    /// `object=`: the object's CKA_LABEL.
    pub object: Option<String>,
    /// `id=`: the object's CKA_ID bytes.
    pub id: Option<Vec<u8>>,
    /// `type=`: the object class.
    pub object_type: Option<ObjectType>,
}

impl Pkcs11Uri {
    /// Parses any well-formed `pkcs11:` URI with stamp's supported attributes.
    pub fn parse(s: &str) -> Result<Self, UriError> {
        if s.len() > MAX_URI {
            return Err(UriError::TooLong);
        }
        let path = s.strip_prefix("pkcs11:").ok_or(UriError::Scheme)?;
        if path.contains('?') {
            return Err(UriError::Query);
        }
        let mut uri = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| UriError::NoValue(attr.chars().take(40).collect()))?;
            fn set<T>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), UriError> {
                if slot.is_some() {
                    return Err(UriError::Duplicate(name));
                }
                *slot = Some(v);
                Ok(())
            }
            fn text(name: &'static str, value: &str) -> Result<String, UriError> {
                String::from_utf8(decode(name, value)?).map_err(|_| UriError::Utf8(name))
            }
            match name {
                "token" => set(&mut uri.token, "token", text("token", value)?)?,
                "manufacturer" => set(
                    &mut uri.manufacturer,
                    "manufacturer",
                    text("manufacturer", value)?,
                )?,
                "model" => set(&mut uri.model, "model", text("model", value)?)?,
                "serial" => set(&mut uri.serial, "serial", text("serial", value)?)?,
                "object" => set(&mut uri.object, "object", text("object", value)?)?,
                "id" => set(&mut uri.id, "id", decode("id", value)?)?,
                "type" => {
                    let t = match text("type", value)?.as_str() {
                        "public" => ObjectType::Public,
                        "private" => ObjectType::Private,
                        "cert" => ObjectType::Cert,
                        "secret-key" => ObjectType::SecretKey,
                        "data" => ObjectType::Data,
                        other => return Err(UriError::Type(other.chars().take(40).collect())),
                    };
                    set(&mut uri.object_type, "type", t)?
                }
                other => return Err(UriError::Unsupported(other.chars().take(40).collect())),
            }
        }
        Ok(uri)
    }

    /// Parses a key reference: it must name a token and an object.
    pub fn parse_key(s: &str) -> Result<Self, UriError> {
        let uri = Self::parse(s)?;
        if uri.token.is_none() && uri.serial.is_none() {
            return Err(UriError::NoToken);
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(UriError::NoObject);
        }
        Ok(uri)
    }

    /// Parses a key store target (where new keys go): a token, and no object.
    pub fn parse_token(s: &str) -> Result<Self, UriError> {
        let uri = Self::parse(s)?;
        if uri.token.is_none() && uri.serial.is_none() {
            return Err(UriError::NoToken);
        }
        if uri.object.is_some() || uri.id.is_some() || uri.object_type.is_some() {
            return Err(UriError::ObjectInTarget);
        }
        Ok(uri)
    }

    /// This URI with only the token attributes (drops object, id and type).
    pub fn token_only(&self) -> Self {
        Pkcs11Uri {
            token: self.token.clone(),
            manufacturer: self.manufacturer.clone(),
            model: self.model.clone(),
            serial: self.serial.clone(),
            ..Default::default()
        }
    }

    /// The reference of an object of this URI's token, by label.
    pub fn with_object(&self, label: &str) -> Self {
        Pkcs11Uri {
            object: Some(label.to_owned()),
            ..self.token_only()
        }
    }

    /// Whether a token with these fields is the one this URI names.
    pub fn matches_token(&self, label: &str, manufacturer: &str, model: &str, serial: &str) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have.trim_end());
        eq(&self.token, label)
            && eq(&self.manufacturer, manufacturer)
            && eq(&self.model, model)
            && eq(&self.serial, serial)
    }

    /// A short description of the token for messages (`token "site"`).
    pub fn token_description(&self) -> String {
        match (&self.token, &self.serial) {
            (Some(t), _) => format!("{t:?}"),
            (None, Some(s)) => format!("with serial {s:?}"),
            (None, None) => "(any)".to_owned(),
        }
    }
}

/// Bytes allowed unencoded in a path attribute value (RFC 7512 `pk11-pchar` without `%`).
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=&".contains(&b)
}

fn decode(name: &'static str, value: &str) -> Result<Vec<u8>, UriError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(UriError::Encoding(name))?;
            let hex = std::str::from_utf8(hex).map_err(|_| UriError::Encoding(name))?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(UriError::Encoding(name));
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UriError::Encoding(name))?);
            i += 3;
        } else if allowed(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(UriError::Encoding(name));
        }
    }
    Ok(out)
}

fn encode(f: &mut fmt::Formatter<'_>, bytes: &[u8], all: bool) -> fmt::Result {
    for &b in bytes {
        if !all && allowed(b) {
            write!(f, "{}", b as char)?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pkcs11:")?;
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let r = if first { Ok(()) } else { f.write_str(";") };
            first = false;
            r
        };
        for (name, value) in [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("serial", &self.serial),
            ("object", &self.object),
        ] {
            if let Some(v) = value {
                sep(f)?;
                write!(f, "{name}=")?;
                encode(f, v.as_bytes(), false)?;
            }
        }
        if let Some(id) = &self.id {
            sep(f)?;
            f.write_str("id=")?;
            encode(f, id, true)?;
        }
        if let Some(t) = self.object_type {
            sep(f)?;
            write!(f, "type={}", t.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let u = Pkcs11Uri::parse_key("pkcs11:token=site;object=site-issuing-ca").unwrap();
        assert_eq!(u.token.as_deref(), Some("site"));
        assert_eq!(u.object.as_deref(), Some("site-issuing-ca"));
        assert_eq!(u.to_string(), "pkcs11:token=site;object=site-issuing-ca");

        // RFC 7512 section 7 examples (the attributes stamp supports).
        let u = Pkcs11Uri::parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;\
             model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(u.serial.as_deref(), Some(""));
        assert_eq!(
            u.id.as_deref(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        assert_eq!(u.object_type, Some(ObjectType::Cert));
        let again = Pkcs11Uri::parse(&u.to_string()).unwrap();
        assert_eq!(again, u);
        assert!(u
            .to_string()
            .contains("token=The%20Software%20PKCS%2311%20Softtoken"));
        assert!(u.to_string().contains("id=%69%95%3E%5C%F4%BD%EC%91"));

        let u = Pkcs11Uri::parse("pkcs11:object=%E5%B0%8F%E9%A3%BE%E5%BC%BE;token=a;b=").err();
        assert_eq!(u, Some(UriError::Unsupported("b".into())));
        let u = Pkcs11Uri::parse("pkcs11:object=%E5%B0%8F%E9%A3%BE%E5%BC%BE;token=a").unwrap();
        assert_eq!(u.object.as_deref(), Some("小飾弾"));
        assert_eq!(Pkcs11Uri::parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn encodes_reserved_characters() {
        let u = Pkcs11Uri {
            token: Some("a;b/c?d%e f".into()),
            object: Some("x=y&z".into()),
            ..Default::default()
        };
        let s = u.to_string();
        assert_eq!(s, "pkcs11:token=a%3Bb%2Fc%3Fd%25e%20f;object=x=y&z");
        assert_eq!(Pkcs11Uri::parse(&s).unwrap(), u);
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        use UriError::*;
        let e = |s: &str| Pkcs11Uri::parse(s).unwrap_err();
        assert_eq!(e("file:x"), Scheme);
        assert_eq!(e("pkcs11:token=a?pin-value=1234"), Query);
        assert_eq!(e("pkcs11:token=a?module-path=/tmp/x.so"), Query);
        assert_eq!(e("pkcs11:token=a;token=b"), Duplicate("token"));
        assert_eq!(e("pkcs11:token=a b"), Encoding("token"));
        assert_eq!(e("pkcs11:token=%4"), Encoding("token"));
        assert_eq!(e("pkcs11:token=%zz"), Encoding("token"));
        assert_eq!(e("pkcs11:token=%FF"), Utf8("token"));
        assert_eq!(e("pkcs11:token"), NoValue("token".into()));
        assert_eq!(e("pkcs11:slot-id=1"), Unsupported("slot-id".into()));
        assert_eq!(e("pkcs11:type=key"), Type("key".into()));
        assert_eq!(e(&format!("pkcs11:token={}", "a".repeat(2000))), TooLong);
        assert_eq!(Pkcs11Uri::parse_key("pkcs11:token=a").unwrap_err(), NoObject);
        assert_eq!(Pkcs11Uri::parse_key("pkcs11:object=a").unwrap_err(), NoToken);
        assert_eq!(
            Pkcs11Uri::parse_token("pkcs11:token=a;object=b").unwrap_err(),
            ObjectInTarget
        );
        assert!(Pkcs11Uri::parse_token("pkcs11:token=a").is_ok());
    }

    #[test]
    fn matches_tokens_by_every_given_attribute() {
        let u = Pkcs11Uri::parse("pkcs11:token=hq;serial=42").unwrap();
        assert!(u.matches_token("hq                              ", "SoftHSM", "v2", "42"));
        assert!(!u.matches_token("hq", "SoftHSM", "v2", "43"));
        assert!(!u.matches_token("hq2", "SoftHSM", "v2", "42"));
        assert_eq!(
            u.with_object("oem-root").to_string(),
            "pkcs11:token=hq;serial=42;object=oem-root"
        );
    }
}
