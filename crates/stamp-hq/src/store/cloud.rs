//! The store's queries for the cloud exports (`crate::cloud`, docs/cloud.md): grants and
//! revocations as the registry carries them, the AWS IoT bulk registration input, and the CA
//! certificates a cloud trusts.

use std::collections::BTreeMap;
use std::io::Write;

use serde_bytes::ByteBuf;
use stamp_core::entitlement::GrantState;
use stamp_core::profile::Profile;
use stamp_core::registry::Revocation;
use stamp_core::{cert, fingerprint, SiteId};

use crate::{HqError, HqStore};

/// A CA certificate for a cloud, PEM with its fingerprint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaCert {
    /// The site, for a site issuing CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    /// SHA-256 of the DER, colon hex.
    pub sha256: String,
    /// The certificate, PEM.
    pub pem: String,
}

/// Every grant HQ made, with its site, in creation order.
pub(crate) fn grant_states(store: &HqStore) -> Result<Vec<(String, GrantState)>, HqError> {
    let mut stmt = store
        .conn()
        .prepare("SELECT site_id, state_json FROM entitlements ORDER BY rowid")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(s, j)| Ok((s, serde_json::from_str(&j)?)))
        .collect()
}

/// Every revocation HQ recorded, in order.
pub(crate) fn revocations(store: &HqStore) -> Result<Vec<Revocation>, HqError> {
    let mut stmt = store.conn().prepare(
        "SELECT device_serial, certificate_sha256, entitlement_id, site_id, reason, revoked_at FROM revocations ORDER BY id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Revocation {
                device_serial: r.get::<_, Option<i64>>(0)?.map(stamp_store::from_sql),
                certificate_sha256: r.get::<_, Option<Vec<u8>>>(1)?.map(ByteBuf::from),
                entitlement_id: r.get(2)?,
                site_id: r.get(3)?,
                reason: r.get(4)?,
                revoked_at: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A thing name AWS IoT accepts (`[a-zA-Z0-9:_-]`, at most 128 characters).
fn thing_name(product_id: &str, serial: u64) -> String {
    let p: String = product_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    format!("{p}-{serial}")
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct BulkLine<'a> {
    thing_name: String,
    serial_number: String,
    certificate_pem: String,
    #[serde(rename = "CACertificatePem")]
    ca_certificate_pem: &'a str,
    site_id: &'a str,
    entitlement_id: &'a str,
    product_id: &'a str,
}

impl HqStore {
    /// Writes the AWS IoT bulk registration input: one JSON object per line per registered,
    /// unrevoked device. Returns the number of lines.
    pub fn export_aws_bulk(&self, out: &mut dyn Write) -> Result<u64, HqError> {
        let products: BTreeMap<String, String> = grant_states(self)?
            .into_iter()
            .map(|(_, st)| {
                (
                    st.grant.entitlement_id.clone(),
                    st.grant.product.product_id.clone(),
                )
            })
            .collect();
        let mut cas = BTreeMap::new();
        for (site, _) in self.sites()? {
            if let Ok(id) = SiteId::new(&site) {
                cas.insert(
                    site,
                    cert::to_pem(&self.site_certificate(&id, Profile::SiteIssuingCa)?),
                );
            }
        }
        let revoked = revocations(self)?;
        let mut n = 0u64;
        let io = |source| HqError::Io {
            path: "<registration file>".into(),
            source,
        };
        self.for_each_device(None, |d| {
            let is_revoked = revoked.iter().any(|r| {
                r.device_serial == Some(d.device_serial)
                    || r.certificate_sha256.as_ref().map(hex::encode).as_deref()
                        == Some(&d.certificate_sha256)
                    || r.entitlement_id.as_deref() == Some(&d.entitlement_id)
                    || r.site_id.as_deref() == Some(&d.site_id)
            });
            if is_revoked || d.superseded {
                return Ok(());
            }
            let product = products.get(&d.entitlement_id).map_or("device", String::as_str);
            let line = BulkLine {
                thing_name: thing_name(product, d.device_serial),
                serial_number: d.device_serial.to_string(),
                certificate_pem: cert::to_pem(&d.certificate),
                ca_certificate_pem: cas.get(&d.site_id).map_or("", String::as_str),
                site_id: &d.site_id,
                entitlement_id: &d.entitlement_id,
                product_id: product,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n").map_err(io)?;
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// The OEM root and every site issuing CA, PEM.
    pub fn cloud_cas(&self) -> Result<(CaCert, Vec<CaCert>), HqError> {
        let (_, root) = self.own_key(Profile::OemRoot)?;
        let ca = |site_id, der: &[u8]| CaCert {
            site_id,
            sha256: fingerprint::colon_hex(&fingerprint::sha256(der)),
            pem: cert::to_pem(der),
        };
        let mut sites = Vec::new();
        for (site, _) in self.sites()? {
            if let Ok(id) = SiteId::new(&site) {
                let der = self.site_certificate(&id, Profile::SiteIssuingCa)?;
                sites.push(ca(Some(site), &der));
            }
        }
        Ok((ca(None, &root), sites))
    }
}
