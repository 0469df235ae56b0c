//! The policy checks of reconciliation, entry by entry, and what they record, inside the
//! reconciliation transaction: the grant's rule ([`stamp_core::admission::check`], through
//! [`super::policy`]), the clock bounds, certificates, claims on serials and keys, renewals and
//! the live certificate of each serial.

use super::*;

/// The policy checks and what they record, inside the reconciliation transaction.
pub(super) struct Run<'a> {
    pub(super) tx: &'a Connection,
    pub(super) site: &'a SiteId,
    pub(super) ca: &'a X509Certificate<'a>,
    pub(super) bundle_id: &'a [u8],
    pub(super) now: &'a str,
    /// The bundle's arrival at HQ (Unix milliseconds, HQ's clock).
    pub(super) now_ms: i64,
    /// Grants the log has applied, loaded as entries refer to them: bounded by the site's grants.
    pub(super) grants: HashMap<String, GrantTrack>,
    pub(super) last_sequence: u64,
    pub(super) violations: Violations,
    pub(super) devices_issued: u64,
    pub(super) devices_recorded: u64,
    pub(super) applied: u64,
    pub(super) refusals: BTreeMap<String, u64>,
}

impl Run<'_> {
    /// `issued` is [`device::verify_issued`] for the entry's certificate, computed ahead.
    pub(super) fn entry(&mut self, index: u64, entry: Entry, issued: Option<Issued>) -> Result<(), HqError> {
        if entry.time_ms > self.now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            let t = rfc3339_ms(entry.time_ms);
            self.violations.add(ViolationKind::TimeInFuture, None, "", index, |n| {
                format!(
                    "{n} entr(ies) dated more than 15 minutes after the bundle reached HQ (the first at {t}): \
                     the site's clock is ahead"
                )
            });
        }
        match entry.event {
            Event::EntitlementApplied {
                entitlement_id,
                sequence,
                action,
                package_sha256,
            } => self.applied(
                index,
                entry.time_ms,
                &entitlement_id,
                sequence,
                &action,
                &package_sha256,
            ),
            Event::DeviceIssued(d) => self.device(index, entry.time_ms, &d, false, issued),
            Event::KeyHandedOut(d) => self.device(index, entry.time_ms, &d, true, issued),
            Event::DeviceRenewed(d) => self.renewed(index, entry.time_ms, &d, issued),
            Event::RequestRefused { reason, .. } => {
                *self.refusals.entry(reason.code().to_owned()).or_insert(0) += 1;
                Ok(())
            }
            // In the log for the record (who could ask for devices, from when to when); the site
            // service enforces a revocation per request and logs what it refuses.
            Event::ExportMade { .. } | Event::StationAdded { .. } | Event::StationRevoked { .. } => Ok(()),
        }
    }

    /// Loads a grant the log applied in an earlier bundle, if not in memory yet.
    pub(super) fn load(&mut self, id: &str) -> Result<bool, HqError> {
        if self.grants.contains_key(id) {
            return Ok(true);
        }
        match db::grant(self.tx, self.site, id)? {
            Some(row) => {
                let mut track = GrantTrack::restore(row.state, row.issued, &row.tails);
                track.frontier = row.frontier;
                self.grants.insert(id.to_owned(), track);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// An entitlement-applied entry: the grant or amendment HQ sealed with that sequence is in
    /// force from here on.
    pub(super) fn applied(
        &mut self,
        index: u64,
        time_ms: i64,
        id: &str,
        sequence: u64,
        action: &str,
        sha: &[u8],
    ) -> Result<(), HqError> {
        let v = &mut self.violations;
        let group = index.to_string();
        if sequence <= self.last_sequence {
            let last = self.last_sequence;
            v.add(
                ViolationKind::PackageOutOfOrder,
                Some(&short(id)),
                &group,
                index,
                |_| format!("package {sequence} applied after package {last}"),
            );
            return Ok(());
        }
        let Some(db::Package {
            entitlement_id: pkg_id,
            action: pkg_action,
            entitlement: e,
            sealed,
        }) = db::package(self.tx, self.site, sequence)?
        else {
            v.add(
                ViolationKind::UnknownPackage,
                Some(&short(id)),
                &group,
                index,
                |_| format!("HQ never made a package with sequence {sequence} for this site"),
            );
            return Ok(());
        };
        if pkg_id != id || pkg_action != action {
            v.add(ViolationKind::UnknownPackage, Some(&short(id)), &group, index, |_| {
                format!(
                    "the entry says package {sequence} is {} of {}; HQ's package {sequence} is {pkg_action} of {pkg_id}",
                    short(action),
                    short(id)
                )
            });
            return Ok(());
        }
        if sequence > self.last_sequence.saturating_add(1) {
            let first = self.last_sequence + 1;
            let skipped = if first == sequence - 1 {
                format!("package {first}")
            } else {
                format!("packages {first} to {}", sequence - 1)
            };
            v.add(ViolationKind::PackageSkipped, Some(&short(id)), &group, index, |_| {
                format!(
                    "package {sequence} applied while {skipped} HQ sealed for this site never was (a site applies packages strictly in sequence)"
                )
            });
        }
        self.last_sequence = sequence;
        self.applied += 1;
        // Times never go back along a log, so an entry that applies a package bounds every later
        // entry: none can be earlier than HQ made the package (less the allowed skew).
        let made_ms = e.issued_at.saturating_mul(1000);
        if time_ms < made_ms.saturating_sub(MAX_CLOCK_SKEW_MS) {
            let (t, made) = (rfc3339_ms(time_ms), rfc3339_ms(made_ms));
            v.add(ViolationKind::TimeBeforePackage, Some(id), &group, index, |_| {
                format!("package {sequence} applied at {t}, before HQ made it at {made}: the site's clock is behind")
            });
        }
        if sha256(&sealed).as_slice() != sha {
            v.add(ViolationKind::UnknownPackage, Some(id), &group, index, |_| {
                format!(
                    "package {sequence}'s SHA-256 differs from the package HQ sealed (altered in transit?)"
                )
            });
        }
        match e.action {
            Action::Grant(g) => {
                self.grants
                    .entry(id.to_owned())
                    .or_insert_with(|| GrantTrack::new(GrantState::new(g, sequence)));
            }
            Action::Amend(a) => {
                let target = a.entitlement_id.clone();
                if !self.load(&target)? {
                    self.violations
                        .add(ViolationKind::InvalidAmendment, Some(id), &group, index, |_| {
                            format!("package {sequence} amends {target}, which the log never applied")
                        });
                    return Ok(());
                }
                if let Some(t) = self.grants.get_mut(&target) {
                    match entitlement::amend(&t.state, &a, sequence) {
                        Ok(next) => t.state = next,
                        Err(err) => self.violations.add(
                            ViolationKind::InvalidAmendment,
                            Some(id),
                            &group,
                            index,
                            |_| format!("package {sequence} cannot apply to {target}: {err}"),
                        ),
                    }
                }
            }
        }
        Ok(())
    }

    /// A renewal: a new certificate for a device HQ registered from this site, under the same
    /// grant. Checked like an issuance (issuer, profile, the entry's claims, notBefore), then
    /// by the grant's rule for renewals; a new key needs the device's proof of possession by its
    /// live certificate's key, and must be certified nowhere else in this site's logs. A genuine
    /// renewal becomes the serial's live certificate and supersedes the one before.
    pub(super) fn renewed(
        &mut self,
        index: u64,
        time_ms: i64,
        d: &EntryDevice,
        issued: Option<Issued>,
    ) -> Result<(), HqError> {
        let id = short(&d.entitlement_id);
        let mut genuine = true;
        self.load(&d.entitlement_id)?;
        let site = self.site;
        let serial = d.device_serial;
        let v = &mut self.violations;
        if sha256(&d.certificate).as_slice() != d.certificate_sha256.as_slice() {
            genuine &= mismatch(v, &id, index, "certificate SHA-256");
        }
        if d.hq_key_index.is_some() {
            genuine &= mismatch(v, &id, index, "HQ key index (a renewal has none)");
        }
        let live = db::live_device(self.tx, serial)?
            .filter(|l| l.site_id == site.as_str() && l.entitlement_id == d.entitlement_id);
        let Some(t) = self.grants.get(&d.entitlement_id) else {
            v.add(ViolationKind::UnknownEntitlement, Some(&id), "", index, |n| {
                format!("{n} renewal(s) under entitlement {id}, which the site's log never applied")
            });
            return Ok(());
        };
        match check_device(&d.certificate, &t.state.grant, self.ca, issued) {
            Ok(info) => {
                if info.device_serial != serial {
                    genuine &= mismatch(v, &id, index, "device serial");
                }
                if info.public_key_sha256.as_slice() != d.public_key_sha256.as_slice() {
                    genuine &= mismatch(v, &id, index, "public key SHA-256");
                }
                genuine &= not_before_matches(v, &id, index, time_ms, &info);
            }
            Err(e) => genuine &= certificate_refused(v, &id, site, index, e),
        }
        let Some(live) = live else {
            v.add(
                ViolationKind::RenewalOfUnknownDevice,
                Some(&id),
                &serial.to_string(),
                index,
                |n| format!("{n} renewal(s) of device serial {serial}, which HQ never registered from site {site} under {id}"),
            );
            return Ok(());
        };
        let keeps_key = live.public_key_sha256.as_slice() == d.public_key_sha256.as_slice();
        if !keeps_key {
            let proven = <[u8; 32]>::try_from(d.public_key_sha256.as_slice()).is_ok_and(|new_key| {
                d.possession_proof
                    .as_ref()
                    .is_some_and(|p| device::verify_renewal_proof(&live.certificate, &new_key, p).is_ok())
            });
            if !proven {
                genuine = false;
                v.add(
                    ViolationKind::PossessionNotProven,
                    Some(&id),
                    &serial.to_string(),
                    index,
                    |n| {
                        format!(
                            "{n} renewal(s) of device serial {serial} for a new key without the device's proof of \
                             possession (a station or the site alone asked)"
                        )
                    },
                );
            }
        }
        let period_ms = t.state.grant.renewal_limit.period.seconds() * 1000;
        let before = db::count_renewal(self.tx, serial, time_ms, period_ms)?;
        for b in t.renew(keeps_key, time_ms, &d.station, None, serial, before) {
            genuine = false;
            breach(v, &id, index, "renewed", b);
        }
        if !keeps_key && d.public_key_sha256.len() == 32 {
            genuine &= self.key_unique(d, index, genuine)?;
        }
        if genuine && db::record_device(self.tx, site, d, time_ms, index, self.bundle_id, self.now)? {
            db::set_live(self.tx, serial, &d.certificate_sha256, true)?;
            self.devices_recorded += 1;
        }
        Ok(())
    }

    /// Uniqueness of a new key: certified before in this site's logs, it is a violation of this
    /// site (returns false). Certified first by another site, it is reported, and neither device
    /// loses its standing: each is its own serial, usable only with the private key, and one
    /// site must not be able to burn another's devices by logging their public keys first. An
    /// entry that is no longer `genuine` claims nothing.
    pub(super) fn key_unique(&mut self, d: &EntryDevice, index: u64, genuine: bool) -> Result<bool, HqError> {
        let (site, grant) = (self.site, d.entitlement_id.as_str());
        let id = short(grant);
        let first = if genuine {
            db::claim_public_key(self.tx, &d.public_key_sha256, site, grant, index)?
        } else {
            db::public_key_use(self.tx, &d.public_key_sha256)?
        };
        let Some(first) = first else {
            return Ok(true);
        };
        let key = hex::encode(&d.public_key_sha256);
        self.violations
            .add(ViolationKind::KeyReused, Some(&id), &key, index, |n| {
                format!(
                    "public key (SPKI SHA-256 {key}) certified {n} more time(s); first {}",
                    first_use(&first, site)
                )
            });
        if first.site_id == site.as_str() {
            self.violations
                .note_earlier(ViolationKind::KeyReused, first.log_index);
            return Ok(false);
        }
        Ok(true)
    }

    /// A device-issued or key-handed-out entry: the grant's rule (as the site applies it), the
    /// serial in the grant's ranges, the certificate (issuer, profile, notBefore, the entry's
    /// claims), HQ-generated keys; then uniqueness. Only an entry that breaks nothing claims its
    /// serial and key: a violating entry can never take them from the device they belong to.
    pub(super) fn device(
        &mut self,
        index: u64,
        time_ms: i64,
        d: &EntryDevice,
        handed_out: bool,
        issued: Option<Issued>,
    ) -> Result<(), HqError> {
        self.devices_issued += 1;
        let id = short(&d.entitlement_id);
        let mut genuine = true;
        self.load(&d.entitlement_id)?;
        let site = self.site;
        let v = &mut self.violations;
        if sha256(&d.certificate).as_slice() != d.certificate_sha256.as_slice() {
            genuine &= mismatch(v, &id, index, "certificate SHA-256");
        }
        match (handed_out, d.hq_key_index) {
            (true, None) => genuine &= mismatch(v, &id, index, "HQ key index (missing)"),
            (false, Some(_)) => {
                genuine &= mismatch(v, &id, index, "HQ key index (a device's own key has none)")
            }
            _ => {}
        }
        if d.possession_proof.is_some() {
            genuine &= mismatch(v, &id, index, "proof of possession (only a renewal has one)");
        }
        let Some(t) = self.grants.get_mut(&d.entitlement_id) else {
            let whose = match db::grant_site(self.tx, &d.entitlement_id)? {
                Some(s) if s == site.as_str() => "the site's log never applied".to_owned(),
                Some(s) => format!("HQ made for site {s}"),
                None => "HQ never made".to_owned(),
            };
            v.add(ViolationKind::UnknownEntitlement, Some(&id), "", index, |n| {
                format!("{n} device(s) issued under entitlement {id}, which {whose}")
            });
            return Ok(());
        };
        t.first_issued(d.device_serial);
        let ask = if handed_out { Ask::HandOut } else { Ask::Issue };
        let mut in_range = true;
        for f in t.issue(ask, time_ms, &d.station, None, d.device_serial) {
            genuine = false;
            in_range &= f != Finding::SerialOutsideRange;
            finding(v, &t.state, &id, index, time_ms, f);
        }
        // HQ-generated keys: a hand-out names one HQ made for this grant, with its key.
        if let (true, Some(k)) = (handed_out, d.hq_key_index) {
            let generated = usize::try_from(k)
                .ok()
                .and_then(|k| t.state.grant.device_keys.get(k))
                .is_some_and(|key| key.spki_sha256.as_slice() == d.public_key_sha256.as_slice());
            if !generated {
                genuine = false;
                v.add(ViolationKind::UnknownHqKey, Some(&id), &k.to_string(), index, |n| {
                    format!("{n} hand-out(s) of HQ key {k} of {id} with a public key HQ did not generate as that key")
                });
            }
        }
        match check_device(&d.certificate, &t.state.grant, self.ca, issued) {
            Ok(info) => {
                if info.device_serial != d.device_serial {
                    genuine &= mismatch(v, &id, index, "device serial");
                }
                if info.public_key_sha256.as_slice() != d.public_key_sha256.as_slice() {
                    genuine &= mismatch(v, &id, index, "public key SHA-256");
                }
                genuine &= not_before_matches(v, &id, index, time_ms, &info);
            }
            Err(e) => genuine &= certificate_refused(v, &id, site, index, e),
        }
        // Uniqueness, across every bundle of every site: serials, public keys, HQ keys. A serial
        // outside the grant's ranges is not the grant's to claim (it is reported above).
        let grant = d.entitlement_id.as_str();
        let serial = d.device_serial;
        if in_range {
            let first = if genuine {
                db::claim_serial(self.tx, serial, site, grant, index)?
            } else {
                db::serial_use(self.tx, serial)?
            };
            if let Some(first) = first {
                genuine = false;
                v.add(
                    ViolationKind::SerialReused,
                    Some(&id),
                    &serial.to_string(),
                    index,
                    |n| {
                        format!(
                            "device serial {serial} issued {n} more time(s); first {}",
                            first_use(&first, site)
                        )
                    },
                );
                if first.site_id == site.as_str() {
                    v.note_earlier(ViolationKind::SerialReused, first.log_index);
                }
            }
        }
        if d.public_key_sha256.len() != 32 {
            genuine &= mismatch(v, &id, index, "public key SHA-256 (not 32 bytes)");
        } else {
            genuine &= self.key_unique(d, index, genuine)?;
        }
        if let (true, Some(k)) = (handed_out, d.hq_key_index) {
            if let Some(first) = db::claim_hq_key(self.tx, grant, k, site, index)? {
                genuine = false;
                self.violations.add(
                    ViolationKind::HqKeyReused,
                    Some(&id),
                    &k.to_string(),
                    index,
                    |n| {
                        format!(
                            "HQ-generated key {k} of {id} handed out {n} more time(s); first {}",
                            first_use(&first, site)
                        )
                    },
                );
                if first.site_id == site.as_str() {
                    self.violations
                        .note_earlier(ViolationKind::HqKeyReused, first.log_index);
                }
            }
        }
        if genuine && db::record_device(self.tx, site, d, time_ms, index, self.bundle_id, self.now)? {
            db::set_live(self.tx, serial, &d.certificate_sha256, false)?;
            self.devices_recorded += 1;
        }
        Ok(())
    }

    /// Stores the new state and the report.
    /// Every package HQ sealed for the site above the last one the log applied, sealed more than
    /// `grace` before `now` (HQ's clock for both): [`ViolationKind::PackageNotApplied`]. Packages
    /// the log skipped are reported where it skipped them ([`ViolationKind::PackageSkipped`]).
    pub(super) fn unapplied_packages(
        &mut self,
        now: OffsetDateTime,
        grace: time::Duration,
    ) -> Result<(), HqError> {
        let rows = db::packages_after(self.tx, self.site, self.last_sequence)?;
        for (sequence, id, action, created_at) in rows {
            let created = OffsetDateTime::parse(&created_at, &time::format_description::well_known::Rfc3339)
                .map_err(|_| reject(Rejection::StoredState("a package's creation time")))?;
            let age = now - created;
            if age <= grace {
                continue;
            }
            let last = self.last_sequence;
            self.violations.add_unlogged(
                ViolationKind::PackageNotApplied,
                Some(&short(&id)),
                format!(
                    "package {sequence} ({action} of {id}), sealed by HQ at {created_at}, is not applied in the reconciled log {} later (grace {}; the log's last package is {last}): `stamp hq export-package` re-exports it",
                    span(age),
                    span(grace)
                ),
            );
        }
        Ok(())
    }

    pub(super) fn finish(
        self,
        header: &BundleHeader,
        previous: Option<&db::SiteLog>,
        log: &db::SiteLog,
        size: u64,
    ) -> Result<ReconcileReport, HqError> {
        for t in self.grants.values() {
            db::save_grant(self.tx, self.site, &t.state, t.issued, &t.tails(), self.now)?;
            db::save_frontier(self.tx, &t.state.grant.entitlement_id, t.frontier)?;
        }
        let ok = self.violations.is_empty();
        let (violations, violations_omitted) = self.violations.finish();
        let report = ReconcileReport {
            ok,
            site_id: self.site.clone(),
            bundle_id: hex::encode(&header.bundle_id),
            first_index: header.first_index,
            entries: header.entry_count,
            devices_issued: self.devices_issued,
            devices_recorded: self.devices_recorded,
            entitlements_applied: self.applied,
            refusals_by_reason: self.refusals,
            previous: previous.map(|p| TreeHeadSummary {
                size: p.size,
                root: hex::encode(&p.root),
            }),
            checkpoint: TreeHeadSummary {
                size,
                root: hex::encode(&log.root),
            },
            violations_omitted,
            violations,
        };
        let count = report.violations.len() as u64 + report.violations_omitted;
        db::accept(
            self.tx,
            self.site,
            &db::Accepted {
                log,
                bundle_id: &header.bundle_id,
                first_index: header.first_index,
                entry_count: header.entry_count,
                created_at_ms: header.created_at_ms,
                violations: count,
                devices_recorded: report.devices_recorded,
                report_json: &serde_json::to_string(&report)?,
            },
            self.now,
        )?;
        Ok(report)
    }
}

/// A duration for people, in its largest whole unit: "8 days", "36 hours", "0 seconds".
pub(super) fn span(d: time::Duration) -> String {
    let (n, unit) = if d.whole_days() >= 2 {
        (d.whole_days(), "days")
    } else if d.whole_hours() >= 2 {
        (d.whole_hours(), "hours")
    } else if d.whole_minutes() >= 2 {
        (d.whole_minutes(), "minutes")
    } else {
        (d.whole_seconds(), "seconds")
    };
    format!("{n} {unit}")
}

/// What [`device::verify_issued`] returned for a certificate, if computed ahead.
pub(super) type Issued = Result<device::Issued, DeviceCertError>;

/// `device::check(der, grant, ca)`, finished from the half computed ahead when there is one.
pub(super) fn check_device(
    der: &[u8],
    grant: &entitlement::Grant,
    ca: &X509Certificate<'_>,
    issued: Option<Issued>,
) -> Result<device::DeviceCertInfo, DeviceCertError> {
    match issued {
        Some(issued) => device::check_issued(der, grant, ca, issued),
        None => device::check(der, grant, ca),
    }
}

/// Reports an entry whose claims disagree with its certificate or its kind (returns false).
pub(super) fn mismatch(v: &mut Violations, id: &str, index: u64, what: &'static str) -> bool {
    v.add(ViolationKind::CertificateMismatch, Some(id), what, index, |n| {
        format!("{n} entr(ies) whose {what} disagree with the certificate or the entry's kind")
    });
    false
}

/// Whether a certificate's notBefore is its entry's time (the site sets it when it logs the
/// issuance, to the second); reports it if not.
pub(super) fn not_before_matches(
    v: &mut Violations,
    id: &str,
    index: u64,
    time_ms: i64,
    info: &device::DeviceCertInfo,
) -> bool {
    if info.not_before.unix_timestamp() == time_ms.div_euclid(1000) {
        return true;
    }
    v.add(ViolationKind::NotBeforeMismatch, Some(id), "", index, |n| {
        format!("{n} certificate(s) of {id} whose notBefore is not their entry's time")
    });
    false
}

/// Reports a certificate that is not the site's or not the grant's profile (returns false).
pub(super) fn certificate_refused(
    v: &mut Violations,
    id: &str,
    site: &SiteId,
    index: u64,
    e: DeviceCertError,
) -> bool {
    match e {
        DeviceCertError::Profile(what) => v.add(ViolationKind::ProfileMismatch, Some(id), what, index, |n| {
            format!("{n} certificate(s) do not match {id}'s device profile: {what}")
        }),
        e => v.add(ViolationKind::WrongIssuer, Some(id), "", index, |n| {
            format!("{n} certificate(s) not issued by site {site}'s issuing CA ({e})")
        }),
    }
    false
}

pub(super) fn first_use(f: &db::FirstUse, site: &SiteId) -> String {
    if f.site_id == site.as_str() {
        format!("at entry {} ({})", f.log_index, short(&f.entitlement_id))
    } else {
        format!("by site {} at its entry {}", f.site_id, f.log_index)
    }
}

pub(super) fn period_name(p: RatePeriod) -> &'static str {
    p.name()
}

/// Reports one [`Finding`] of a grant's checks.
pub(super) fn finding(v: &mut Violations, st: &GrantState, id: &str, index: u64, time_ms: i64, f: Finding) {
    match f {
        Finding::Rule(b) => breach(v, id, index, "issued", b),
        Finding::Rate {
            period,
            limit,
            window_start_ms,
            episode,
        } => {
            let p = period_name(period);
            let (from, to) = (rfc3339_ms(window_start_ms), rfc3339_ms(time_ms));
            v.add(
                ViolationKind::RateExceeded,
                Some(id),
                &format!("{p}/{episode}"),
                index,
                |n| {
                    format!(
                        "per-{p} limit of {limit} exceeded: {n} device(s) over the limit in the window \
                         from {from} to {to} (no more than {limit} in any {p})"
                    )
                },
            )
        }
        Finding::SerialOutsideRange => {
            let ranges: Vec<String> = st
                .grant
                .serial_ranges
                .iter()
                .map(|r| format!("{}-{}", r.first, r.last))
                .collect();
            v.add(ViolationKind::SerialOutsideRange, Some(id), "", index, |n| {
                format!(
                    "{n} device(s) with serials outside {id}'s ranges {}",
                    ranges.join(", ")
                )
            })
        }
    }
}

/// Reports one rule of the grant an entry broke; `done` says what the entries did ("issued",
/// "renewed").
pub(super) fn breach(v: &mut Violations, id: &str, index: u64, done: &str, b: Breach) {
    match b {
        Breach::NotActive(Status::Revoked) => {
            v.add(ViolationKind::IssuedWhileRevoked, Some(id), done, index, |n| {
                format!("{n} device(s) {done} after {id} was revoked")
            })
        }
        Breach::NotActive(_) => v.add(ViolationKind::IssuedWhileSuspended, Some(id), done, index, |n| {
            format!("{n} device(s) {done} while {id} was suspended")
        }),
        Breach::DeviceRevoked => v.add(ViolationKind::RenewalOfRevokedDevice, Some(id), "", index, |n| {
            format!("{n} renewal(s) of devices of {id} that HQ revoked")
        }),
        Breach::HqKeysOnly => v.add(ViolationKind::OwnKeyUnderHqKeys, Some(id), done, index, |n| {
            format!(
                "{n} device(s) {done} for a key of their own under {id}, whose devices get HQ-generated keys"
            )
        }),
        Breach::StationNotAllowed => v.add(ViolationKind::StationNotAllowed, Some(id), done, index, |n| {
            format!("{n} device(s) {done} for a station {id} does not name")
        }),
        Breach::OutsideWindow {
            not_before,
            not_after,
        } => {
            let (nb, na) = (
                rfc3339_ms(not_before.saturating_mul(1000)),
                rfc3339_ms(not_after.saturating_mul(1000)),
            );
            v.add(
                ViolationKind::OutsideWindow,
                Some(id),
                &format!("{done}/{not_before}/{not_after}"),
                index,
                |n| format!("{n} device(s) {done} outside {id}'s production window {nb} to {na}"),
            )
        }
        Breach::KeyTypeNotAllowed => {
            v.add(ViolationKind::ProfileMismatch, Some(id), "key type", index, |n| {
                format!("{n} certificate(s) do not match {id}'s device profile: key type")
            })
        }
        // HQ checks key uniqueness through its claims, across every site.
        Breach::DuplicateKey => {}
        Breach::OverQuota { quota } => v.add(
            ViolationKind::OverQuota,
            Some(id),
            &quota.to_string(),
            index,
            |n| format!("{n} device(s) issued beyond {id}'s quota of {quota}"),
        ),
        // Reported with its episode by `finding`.
        Breach::Rate { .. } => {}
        Breach::RenewalLimit { count, period } => {
            let p = period_name(period);
            v.add(ViolationKind::RenewalLimit, Some(id), "", index, |n| {
                format!("{n} renewal(s) beyond {id}'s limit of {count} per device per {p}")
            })
        }
        _ => v.add(ViolationKind::ProfileMismatch, Some(id), "rule", index, |n| {
            format!("{n} entr(ies) break a rule of {id}")
        }),
    }
}
