//! Proving to a cloud that this site holds its issuing CA key.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use stamp_core::profile::{Issuer, Serial};
use time::OffsetDateTime;

use crate::{Site, SiteError};

impl Site {
    /// A verification certificate for registering the site issuing CA with a cloud (AWS IoT CA
    /// registration, Azure IoT DPS proof of possession): subject CN = `code`, subject key
    /// `spki_der` (a throwaway key the caller forgets), signed by the site issuing CA key. It is
    /// not a device certificate and is not logged: it certifies no device and no usable key.
    pub fn cloud_verification_cert(
        &self,
        code: &str,
        spki_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, SiteError> {
        let (ca_der, signer) = self.issuing()?;
        let mut b = [0u8; 16];
        SystemRandom::new().fill(&mut b).map_err(|_| SiteError::Random)?;
        let issuer = Issuer {
            cert_der: &ca_der,
            signer: signer.as_ref(),
        };
        Ok(stamp_core::cloud_ca::verification_cert(
            code,
            spki_der,
            now,
            Serial::from_random(b),
            &issuer,
        )?)
    }
}
