//! Object identifiers stamp defines.
//!
//! stamp has no registered enterprise number, so its arc is a UUID-based OID (ITU-T X.667,
//! `2.25.<uuid as integer>`), which anyone may mint without registration:
//! `2.25.236905634903685235512473382056477109304` (UUID b23a5d99-a21e-495e-b3c7-1455b13cac38).
//!
//! Under it, `.1` holds extended key usages that name the role a certificate was issued for.

/// The stamp arc as a dotted string.
pub const STAMP_ARC: &str = "2.25.236905634903685235512473382056477109304";

/// The UUID behind the arc, as an integer.
const STAMP_UUID: u128 = 236_905_634_903_685_235_512_473_382_056_477_109_304;

/// A stamp role carried in the extended key usage extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleEku {
    /// `STAMP_ARC.1.1`: the HQ authority (signs entitlements, receives audit bundles).
    HqAuthority,
    /// `STAMP_ARC.1.2`: a factory site's identity (signs audit bundles, receives entitlements).
    SiteIdentity,
    /// `STAMP_ARC.1.3`: a line station talking to its site service.
    Station,
}

impl RoleEku {
    fn leaf(self) -> u64 {
        match self {
            RoleEku::HqAuthority => 1,
            RoleEku::SiteIdentity => 2,
            RoleEku::Station => 3,
        }
    }

    /// Dotted-decimal form of the OID.
    pub fn dotted(self) -> String {
        format!("{STAMP_ARC}.1.{}", self.leaf())
    }

    /// DER content octets of the OID (without tag and length), as found in a parsed certificate.
    pub fn der_value(self) -> Vec<u8> {
        let mut out = vec![2 * 40 + 25];
        push_base128(&mut out, STAMP_UUID);
        push_base128(&mut out, 1);
        push_base128(&mut out, u128::from(self.leaf()));
        out
    }
}

/// DER content octets of the role OIDs, as static data for validators that need it (webpki).
const ROLE_PREFIX: [u8; 21] = [
    0x69, 0x82, 0xe4, 0xba, 0xae, 0xe6, 0xb4, 0xa1, 0xf2, 0xa5, 0xbd, 0xb3, 0xe3, 0xc5, 0x8a, 0xdb, 0x89,
    0xf2, 0xd8, 0x38, 0x01,
];
const fn role_oid(leaf: u8) -> [u8; 22] {
    let mut out = [0u8; 22];
    let mut i = 0;
    while i < ROLE_PREFIX.len() {
        out[i] = ROLE_PREFIX[i];
        i += 1;
    }
    out[21] = leaf;
    out
}
static HQ_AUTHORITY: [u8; 22] = role_oid(1);
static SITE_IDENTITY: [u8; 22] = role_oid(2);
static STATION: [u8; 22] = role_oid(3);

impl RoleEku {
    /// The OID's DER content octets as static data.
    pub fn der_static(self) -> &'static [u8] {
        match self {
            RoleEku::HqAuthority => &HQ_AUTHORITY,
            RoleEku::SiteIdentity => &SITE_IDENTITY,
            RoleEku::Station => &STATION,
        }
    }
}

/// The DER content octets of id-kp-clientAuth (1.3.6.1.5.5.7.3.2).
pub const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// The DER content octets of id-kp-codeSigning (1.3.6.1.5.5.7.3.3).
pub const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// The DER content octets of id-kp-serverAuth (1.3.6.1.5.5.7.3.1).
pub const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

fn push_base128(out: &mut Vec<u8>, mut v: u128) {
    let mut tmp = [0u8; 19];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    let n = tmp.len();
    for (k, b) in tmp[i..].iter().enumerate() {
        out.push(if i + k + 1 < n { b | 0x80 } else { *b });
    }
}

/// DER of an ExtKeyUsageSyntax (SEQUENCE OF KeyPurposeId) holding the given OID values.
pub(crate) fn eku_extension_value(oids: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for oid in oids {
        body.push(0x06);
        push_der_len(&mut body, oid.len());
        body.extend_from_slice(oid);
    }
    let mut out = vec![0x30];
    push_der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// A DER length: short form below 128, else 0x80 | n followed by the n big-endian bytes.
fn push_der_len(out: &mut Vec<u8>, len: usize) {
    let be = len.to_be_bytes();
    let skip = be.iter().take_while(|b| **b == 0).count();
    match be.get(skip..) {
        Some([b]) if *b < 0x80 => out.push(*b),
        Some([]) => out.push(0),
        Some(bytes) => {
            out.push(0x80 | u8::try_from(bytes.len()).unwrap_or(0x7f));
            out.extend_from_slice(bytes);
        }
        None => out.push(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_oid_matches_independent_encoding() {
        // Computed independently (Python: 0x69, then base-128 of the UUID integer, then 1, 1).
        assert_eq!(
            hex::encode(RoleEku::HqAuthority.der_value()),
            "6982e4baaee6b4a1f2a5bdb3e3c58adb89f2d8380101"
        );
        assert_eq!(RoleEku::Station.dotted(), format!("{STAMP_ARC}.1.3"));
        for role in [RoleEku::HqAuthority, RoleEku::SiteIdentity, RoleEku::Station] {
            assert_eq!(role.der_static(), role.der_value().as_slice());
        }
    }

    #[test]
    fn small_arcs_encode_like_der() {
        let mut out = Vec::new();
        push_base128(&mut out, 840);
        assert_eq!(out, [0x86, 0x48]);
        out.clear();
        push_base128(&mut out, 5);
        assert_eq!(out, [5]);
    }

    #[test]
    fn der_lengths_use_the_shortest_form() {
        for (len, want) in [
            (0usize, &[0x00][..]),
            (0x7f, &[0x7f]),
            (0x80, &[0x81, 0x80]),
            (0xff, &[0x81, 0xff]),
            (0x100, &[0x82, 0x01, 0x00]),
            (0x1_0000, &[0x83, 0x01, 0x00, 0x00]),
        ] {
            let mut out = Vec::new();
            push_der_len(&mut out, len);
            assert_eq!(out, want, "length {len:#x}");
        }
    }
}
