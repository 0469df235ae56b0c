//! `stamp hq entitle`

use std::collections::BTreeMap;
use std::path::PathBuf;

use stamp_core::entitlement::{DeviceKeyType, DeviceProfile, Product, RatePeriod};
use stamp_core::SiteId;
use stamp_hq::entitle::GrantRequest;

use crate::commands::args::{
    parse_hq_key_type, parse_key_type, parse_key_value, parse_rate, parse_renewals, parse_secret, parse_time,
};
use crate::output::emit;
use crate::Globals;

/// Grant a site a production run, sealed so only that site can read it: allocates the next
/// sequence number for the site and a range of device serials (never overlapping any other
/// allocation), signs with the HQ authority key, encrypts to the site's key, writes the package
/// and records it at HQ.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HQ directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The site (enrolled with `stamp hq enroll-site`).
    #[arg(long, value_name = "ID")]
    site: SiteId,
    /// Product identifier, written into device certificates.
    #[arg(long, value_name = "ID")]
    product: String,
    /// Human-readable product name (default: the product identifier).
    #[arg(long, value_name = "NAME")]
    product_name: Option<String>,
    /// OEM identifier, written into device certificates (OU=). Default: derived from the HQ's
    /// organization name.
    #[arg(long, value_name = "ID")]
    oem_id: Option<String>,
    /// Most devices the site may provision.
    #[arg(long, value_name = "N")]
    quota: u64,
    /// A production rate limit, N per minute, hour or day (repeatable: `--rate 60/minute --rate 20000/day`).
    #[arg(long = "rate", value_name = "N/PERIOD", value_parser = parse_rate)]
    rates: Vec<(RatePeriod, u64)>,
    /// How often one device may be renewed: at most N renewals per device per minute, hour or day
    /// (0/day: never). A renewal supersedes the device's certificate; it never adds a device.
    #[arg(long, value_name = "N/PERIOD", value_parser = parse_renewals, default_value = "2/day")]
    renewals: stamp_core::entitlement::RenewalLimit,
    /// Start of the production window: RFC 3339 (2026-12-01T08:00:00Z) or a date (2026-12-01). Default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    not_before: Option<time::OffsetDateTime>,
    /// End of the production window. Default: --days after the start.
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "days")]
    not_after: Option<time::OffsetDateTime>,
    /// Length of the production window in days, when --not-after is not given.
    #[arg(long, value_name = "DAYS", default_value = "365")]
    days: u32,
    /// Device key types allowed, comma-separated: p256, p384, ed25519, rsa2048, rsa3072, rsa4096.
    #[arg(long, value_name = "TYPES", value_parser = parse_key_type, value_delimiter = ',', default_value = "p256,p384,ed25519")]
    key_types: Vec<DeviceKeyType>,
    /// Device certificate lifetime in days (cut to the site issuing CA's validity).
    #[arg(long, value_name = "DAYS", default_value = "3650")]
    device_validity_days: u32,
    /// Only these stations may provision under this entitlement (repeatable; default: all).
    #[arg(long = "station", value_name = "NAME")]
    stations: Vec<String>,
    /// Data every device receives with its certificate, e.g. `--device-data cloud_endpoint=mqtts://iot.example.com:8883` (repeatable).
    #[arg(long = "device-data", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    device_data: Vec<(String, String)>,
    /// For devices that cannot make their own keys: HQ generates one key of this type per device
    /// of the quota (p256, p384 or ed25519) and seals them in the package; the site hands each out
    /// once (`stamp site hand-out`). HQ keeps only their public-key hashes.
    #[arg(long, value_name = "TYPE", value_parser = parse_hq_key_type)]
    hq_keys: Option<DeviceKeyType>,
    /// With --hq-keys: a random per-device secret to generate, NAME:BYTES (repeatable), e.g.
    /// `--secret flash-encryption-key:32`.
    #[arg(long = "secret", value_name = "NAME:BYTES", value_parser = parse_secret, requires = "hq_keys")]
    secrets: Vec<(String, usize)>,
    /// A firmware release the site may program under this entitlement, `VERSION` or
    /// `VERSION@FORMAT` as recorded by `stamp hq sign-firmware` (repeatable).
    #[arg(long = "firmware", value_name = "VERSION[@FORMAT]")]
    firmware: Vec<String>,
    /// Where to write the sealed package.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// Replace the output file if it exists (without --force, an existing one is refused before
    /// anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
}

fn slug(org: &str) -> String {
    let s: String = org
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    s.chars().take(64).collect()
}

/// Runs `stamp hq entitle`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    crate::commands::check_output(&a.out, a.force)?;
    let now = crate::commands::now();
    let not_before = a.not_before.unwrap_or(now);
    let not_after = a
        .not_after
        .unwrap_or(not_before + time::Duration::days(i64::from(a.days)));
    let mut rate_limits = BTreeMap::new();
    for (period, n) in a.rates {
        if rate_limits.insert(period, n).is_some() {
            return Err(crate::output::CliError::usage(format!(
                "--rate given twice for per-{}",
                period.name()
            )));
        }
    }
    let mut hq = stamp_hq::Hq::open(&a.dir, crate::commands::keys(g))?;
    let org = hq.store().org()?;
    let mut key_types = a.key_types;
    key_types.sort();
    key_types.dedup();
    let req = GrantRequest {
        site: a.site,
        product: Product {
            oem_id: a.oem_id.unwrap_or_else(|| slug(&org)),
            name: a.product_name.unwrap_or_else(|| a.product.clone()),
            product_id: a.product,
        },
        quota: a.quota,
        rate_limits,
        not_before: not_before.unix_timestamp(),
        not_after: not_after.unix_timestamp(),
        device_profile: DeviceProfile {
            validity_days: a.device_validity_days,
            key_types,
            organization: org,
        },
        stations: a.stations,
        device_data: a.device_data.into_iter().collect(),
        firmware: a.firmware,
        hq_keys: a.hq_keys.map(|k| stamp_hq::entitle::HqKeys {
            key_type: k,
            secrets: a.secrets,
        }),
        renewal_limit: a.renewals,
    };
    let r = hq.entitle(&req, &a.out, now)?;
    emit(g.json, &r, || {
        let e = &r.entitlement;
        outln!(
            "Entitlement {} for site {} (sequence {})",
            e.entitlement_id,
            e.site_id,
            r.sequence
        )?;
        outln!(
            "  product {} ({}/{}), quota {}",
            e.product.name,
            e.product.oem_id,
            e.product.product_id,
            e.quota
        )?;
        for s in &e.serial_ranges {
            outln!("  device serials {}..={}", s.first, s.last)?;
        }
        outln!("  rate {}", crate::output::rates(&e.rate_limits))?;
        outln!("  window {} to {}", e.not_before, e.not_after)?;
        outln!("Sealed package for the site: {}", r.package.display())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn slug_makes_identifiers() {
        assert_eq!(super::slug("Acme Sensors, Inc."), "acme-sensors-inc");
    }
}
