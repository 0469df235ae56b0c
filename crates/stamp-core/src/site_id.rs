//! Site identifiers.

use std::fmt;

/// A factory site's identifier: 1 to 48 characters of lowercase ASCII letters, digits and `-`,
/// starting with a letter or digit. It appears in certificate subjects and file names, so it is
/// kept to a character set that needs no escaping anywhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SiteId(String);

/// Why a string is not a valid site ID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid site ID {0:?}: use 1-48 characters of a-z, 0-9 and '-', starting with a letter or digit")]
pub struct InvalidSiteId(pub String);

impl SiteId {
    /// Longest accepted site ID.
    pub const MAX_LEN: usize = 48;

    /// Validates and wraps a site ID.
    pub fn new(s: &str) -> Result<Self, InvalidSiteId> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && s.as_bytes()[0] != b'-';
        if ok {
            Ok(SiteId(s.to_owned()))
        } else {
            Err(InvalidSiteId(s.chars().take(64).collect()))
        }
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SiteId {
    type Error = InvalidSiteId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SiteId::new(&s)
    }
}

impl From<SiteId> for String {
    fn from(s: SiteId) -> String {
        s.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SiteId {
    type Err = InvalidSiteId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SiteId::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(SiteId::new("shenzhen-1").is_ok());
        assert!(SiteId::new("a").is_ok());
        for bad in ["", "-a", "A", "a b", "a/b", "a.b", &"x".repeat(49)] {
            assert!(SiteId::new(bad).is_err(), "{bad}");
        }
    }
}
