//! A Bloom filter of every public key the site has certified, in front of the duplicate-key
//! lookup: a new key (the common case) skips the database.

use crate::{SiteError, SiteStore};

/// Every public key the site has certified or admitted (the SPKI SHA-256 of its devices and
/// renewals, committed or in flight), as a Bloom filter: "absent" is certain, so admission skips
/// the database lookup for a new key; "maybe" (a key seen before, or about one new key in a
/// thousand) asks the database (and the in-flight set) as before. Built at start from the
/// database; a key enters it when it is admitted. Never shrinks: a key admitted and then released
/// only costs later requests for it a lookup.
pub(super) struct KeyFilter {
    pub(super) bits: Vec<u64>,
    /// Bit count minus one (a power of two minus one).
    pub(super) mask: u64,
}

impl KeyFilter {
    /// Bit positions per key.
    const PROBES: u64 = 6;

    /// A filter with 16 bits per key for `keys` keys (at least 2^20), rounded up to a power of
    /// two: about one false "maybe" in a thousand new keys until that many are in it, one in
    /// fifty at twice as many. 2 MiB for up to 1M keys, 4 MiB for 2M.
    pub(super) fn with_capacity(keys: u64) -> KeyFilter {
        let bits = keys
            .clamp(1 << 20, 1 << 34)
            .saturating_mul(16)
            .next_power_of_two();
        KeyFilter {
            bits: vec![0; usize::try_from(bits / 64).unwrap_or(1 << 20)],
            mask: bits - 1,
        }
    }

    /// The bit positions of a key (word, bit mask): double hashing over two 64-bit words of the
    /// SHA-256, which is uniform.
    fn probes(mask: u64, h: &[u8; 32]) -> impl Iterator<Item = (usize, u64)> {
        let word = |from: usize| {
            h.get(from..from + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let (h1, h2) = (word(0), word(8) | 1);
        (0..Self::PROBES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & mask;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    pub(super) fn insert(&mut self, h: &[u8; 32]) {
        for (word, bit) in Self::probes(self.mask, h) {
            if let Some(w) = self.bits.get_mut(word) {
                *w |= bit;
            }
        }
    }

    pub(super) fn may_contain(&self, h: &[u8; 32]) -> bool {
        Self::probes(self.mask, h).all(|(word, bit)| self.bits.get(word).is_none_or(|w| w & bit != 0))
    }

    /// Every key in the site's devices and renewals.
    pub(super) fn load(reader: &SiteStore) -> Result<KeyFilter, SiteError> {
        let conn = reader.conn();
        let n: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM devices) + (SELECT COUNT(*) FROM renewals)",
            [],
            |r| r.get(0),
        )?;
        let mut filter = KeyFilter::with_capacity(u64::try_from(n).unwrap_or(0).saturating_mul(2));
        let mut stmt =
            conn.prepare("SELECT spki_sha256 FROM devices UNION ALL SELECT spki_sha256 FROM renewals")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            // Anything but a SHA-256 is a key no admission can ask for.
            if let Some(k) = row
                .get_ref(0)?
                .as_blob()
                .ok()
                .and_then(|b| <&[u8; 32]>::try_from(b).ok())
            {
                filter.insert(k);
            }
        }
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use stamp_core::fingerprint;

    use super::*;

    #[test]
    fn the_key_filter_never_forgets_a_key_and_rarely_claims_a_new_one() {
        let key = |i: u64| fingerprint::sha256(&i.to_be_bytes());
        let mut f = KeyFilter::with_capacity(0);
        assert_eq!(f.bits.len() * 64, 1 << 24);
        let n = 200_000u64;
        for i in 0..n {
            f.insert(&key(i));
        }
        assert!((0..n).all(|i| f.may_contain(&key(i))));
        let false_maybes = (n..n + 200_000).filter(|i| f.may_contain(&key(*i))).count();
        assert!(false_maybes < 200, "{false_maybes} of 200,000 new keys");
        // Far beyond its capacity it still never forgets; it only says "maybe" more often.
        let mut small = KeyFilter::with_capacity(0);
        small.mask = (1 << 12) - 1;
        small.bits.truncate(1 << 6);
        for i in 0..5_000 {
            small.insert(&key(i));
        }
        assert!((0..5_000).all(|i| small.may_contain(&key(i))));
    }
}
