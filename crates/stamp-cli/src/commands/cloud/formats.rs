//! The AWS IoT just-in-time registration and Azure IoT DPS exports (docs/cloud.md).

use serde_json::{json, Value};
use stamp_hq::cloud::CaCert;
use stamp_hq::HqStore;

/// Format version of both documents.
const VERSION: u32 = 1;

/// The JITP provisioning template: the thing is named `<product ID>-<device serial>` from the
/// device certificate's subject (CN = product ID, serialNumber = device serial).
fn jitp_template() -> String {
    json!({
        "Parameters": {
            "AWS::IoT::Certificate::CommonName": {"Type": "String"},
            "AWS::IoT::Certificate::SerialNumber": {"Type": "String"},
            "AWS::IoT::Certificate::OrganizationalUnit": {"Type": "String"},
            "AWS::IoT::Certificate::Id": {"Type": "String"}
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Fn::Join": ["-", [
                        {"Ref": "AWS::IoT::Certificate::CommonName"},
                        {"Ref": "AWS::IoT::Certificate::SerialNumber"}]]},
                    "AttributePayload": {
                        "oem_id": {"Ref": "AWS::IoT::Certificate::OrganizationalUnit"},
                        "serial": {"Ref": "AWS::IoT::Certificate::SerialNumber"}
                    }
                }
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                    "Status": "ACTIVE"
                }
            }
        }
    })
    .to_string()
}

/// AWS IoT JITR/JITP material: the OEM root and each site issuing CA, with a provisioning
/// template for `register-ca-certificate --registration-config`.
pub fn aws_jitr(store: &HqStore) -> anyhow::Result<Value> {
    let (root, sites) = store.cloud_cas()?;
    let cas: Vec<Value> = sites
        .iter()
        .map(|c: &CaCert| {
            json!({
                "site_id": c.site_id,
                "sha256": c.sha256,
                "certificate_pem": c.pem,
                "verification_cert_command": format!(
                    "stamp site cloud-verification-cert --dir <site {} directory> --code <registration code> -o verification.pem",
                    c.site_id.as_deref().unwrap_or("")
                ),
            })
        })
        .collect();
    Ok(json!({
        "format": "stamp-aws-jitr",
        "version": VERSION,
        "org": store.org()?,
        "oem_root": {"sha256": root.sha256, "certificate_pem": root.pem},
        "ca_certificates": cas,
        "registration_config": {"templateBody": jitp_template(), "roleArn": "<provisioning role ARN>"},
    }))
}

/// Azure IoT DPS material: each site issuing CA as a DPS certificate to verify, and one X.509
/// enrollment group per site referencing it.
pub fn azure_dps(store: &HqStore) -> anyhow::Result<Value> {
    let (root, sites) = store.cloud_cas()?;
    let mut certs = Vec::new();
    let mut groups = Vec::new();
    for c in &sites {
        let site = c.site_id.as_deref().unwrap_or("");
        let name = format!("stamp-{site}-issuing-ca");
        certs.push(json!({"name": name, "site_id": site, "sha256": c.sha256, "certificate_pem": c.pem}));
        groups.push(json!({
            "enrollmentGroupId": format!("stamp-{site}"),
            "attestation": {"type": "x509", "x509": {"caReferences": {"primary": name}}},
            "provisioningStatus": "enabled",
            "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
        }));
    }
    Ok(json!({
        "format": "stamp-azure-dps",
        "version": VERSION,
        "org": store.org()?,
        "oem_root": {"name": "stamp-oem-root", "sha256": root.sha256, "certificate_pem": root.pem},
        "certificates": certs,
        "enrollment_groups": groups,
    }))
}
