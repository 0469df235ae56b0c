//! The OEM root's CRL: every certificate the root issued to a site HQ revoked (its identity and
//! issuing CA certificates), so `openssl verify -crl_check_all` and any RFC 5280 verifier refuse
//! the site's CA and every device under it. Numbers grow by one per CRL; each CRL made is recorded.

use stamp_core::crl::{self, CrlReport, Revoked};
use stamp_core::fingerprint;
use stamp_core::profile::Profile;
use stamp_keys::{KeyRef, KeyStore};
use time::OffsetDateTime;

use crate::{Hq, HqError};

impl Hq {
    /// Makes and records the OEM root's next CRL, valid `days` days from `now`; returns its DER.
    pub fn root_crl(&mut self, days: u32, now: OffsetDateTime) -> Result<(Vec<u8>, CrlReport), HqError> {
        let (this_update, next_update) = crl::times(now, days)?;
        let (root_ref, root_der) = self.store.own_key(Profile::OemRoot)?;
        let signer = self.keys.open_signer(&KeyRef::parse(&root_ref)?)?;
        let mut revoked = Vec::new();
        {
            let mut stmt = self.store.conn().prepare(
                "SELECT c.der, r.revoked_at FROM revocations r JOIN certificates c ON c.site_id = r.site_id
                 WHERE r.site_id IS NOT NULL ORDER BY r.id, c.issued_at, c.sha256",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (cert_der, at) = row?;
                let at = OffsetDateTime::from_unix_timestamp(at).unwrap_or(this_update);
                revoked.push(Revoked::of(&cert_der, at.min(this_update))?);
            }
        }
        self.store.db_mut().transaction(|tx| {
            let number = stamp_store::next_crl_number(tx)?;
            let crl_der = crl::issue(
                &root_der,
                signer.as_ref(),
                number,
                this_update,
                next_update,
                &revoked,
            )?;
            let (this, next) = (this_update.unix_timestamp(), next_update.unix_timestamp());
            stamp_store::record_crl(
                tx,
                number,
                this,
                next,
                revoked.len(),
                &fingerprint::sha256(&crl_der),
            )?;
            let report = CrlReport::of(&crl_der, number, this_update, next_update, revoked.len());
            Ok((crl_der, report))
        })
    }
}
