use super::*;

pub(crate) fn grant(site: &str, seq: u64) -> Entitlement {
    Entitlement {
        version: VERSION,
        site_id: SiteId::new(site).unwrap(),
        sequence: seq,
        issued_at: 1_000,
        action: Action::Grant(Grant {
            entitlement_id: format!("{site}.{seq}"),
            product: Product {
                oem_id: "acme".into(),
                product_id: "thermo-2".into(),
                name: "Thermostat".into(),
            },
            quota: 100,
            rate_limits: BTreeMap::from([(RatePeriod::Minute, 10), (RatePeriod::Day, 1000)]),
            not_before: 0,
            not_after: 10_000,
            serial_ranges: vec![SerialRange { first: 1, last: 100 }],
            device_profile: DeviceProfile {
                validity_days: 3650,
                key_types: vec![DeviceKeyType::P256, DeviceKeyType::Ed25519],
                organization: "Acme".into(),
            },
            stations: vec![],
            device_data: BTreeMap::from([("cloud_endpoint".into(), "mqtts://iot.example:8883".into())]),
            device_keys: vec![],
            firmware: vec![],
            renewal_limit: Default::default(),
        }),
    }
}

#[test]
fn cbor_round_trip_and_bounds() {
    let e = grant("s1", 1);
    let bytes = e.to_cbor();
    assert_eq!(Entitlement::from_cbor(&bytes).unwrap(), e);
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        Entitlement::from_cbor(&trailing),
        Err(EntitlementError::Malformed(_))
    ));
    assert!(matches!(
        Entitlement::from_cbor(&bytes[..bytes.len() - 3]),
        Err(EntitlementError::Malformed(_))
    ));
    let mut v2 = e.clone();
    v2.version = 2;
    assert_eq!(
        Entitlement::from_cbor(&v2.to_cbor()),
        Err(EntitlementError::UnsupportedVersion(2))
    );
    assert_eq!(
        Entitlement::from_cbor(&vec![0u8; MAX_PAYLOAD + 1]),
        Err(EntitlementError::TooLarge)
    );
    // Deeply nested CBOR does not blow the stack.
    assert!(Entitlement::from_cbor(&[0x81; 10_000]).is_err());
}

#[test]
fn invalid_fields_are_refused() {
    let base = grant("s1", 1);
    type Mutation = Box<dyn Fn(&mut Grant)>;
    let cases: Vec<Mutation> = vec![
        Box::new(|g| g.quota = 0),
        Box::new(|g| g.quota = 101),
        Box::new(|g| g.not_after = g.not_before),
        Box::new(|g| {
            g.serial_ranges = vec![
                SerialRange { first: 1, last: 50 },
                SerialRange { first: 50, last: 99 },
            ]
        }),
        Box::new(|g| g.serial_ranges = vec![SerialRange { first: 5, last: 4 }]),
        Box::new(|g| g.device_profile.key_types.clear()),
        Box::new(|g| g.device_profile.validity_days = 0),
        Box::new(|g| {
            g.rate_limits
                .insert(RatePeriod::Hour, 0)
                .map(|_| ())
                .unwrap_or(())
        }),
        Box::new(|g| g.product.product_id = String::new()),
        Box::new(|g| g.entitlement_id = "x".repeat(65)),
        Box::new(|g| {
            g.device_data.insert("k".into(), "v".repeat(MAX_VALUE + 1));
        }),
    ];
    for (i, f) in cases.iter().enumerate() {
        let mut e = base.clone();
        if let Action::Grant(g) = &mut e.action {
            f(g);
        }
        assert!(
            matches!(e.validate(), Err(EntitlementError::Invalid(_))),
            "case {i}"
        );
        assert!(Entitlement::from_cbor(&e.to_cbor()).is_err(), "case {i} decoded");
    }
}

#[test]
fn applicability_site_sequence_window() {
    let e = grant("s1", 5);
    let s1 = SiteId::new("s1").unwrap();
    assert!(check_applicable(&e, &s1, 4, 500).is_ok());
    assert!(matches!(
        check_applicable(&e, &s1, 5, 500),
        Err(EntitlementError::StaleSequence { .. })
    ));
    assert!(matches!(
        check_applicable(&e, &s1, 9, 500),
        Err(EntitlementError::StaleSequence { .. })
    ));
    assert!(matches!(
        check_applicable(&e, &SiteId::new("s2").unwrap(), 4, 500),
        Err(EntitlementError::WrongSite { .. })
    ));
    assert_eq!(
        check_applicable(&e, &s1, 4, 10_000),
        Err(EntitlementError::Expired(10_000))
    );
    // The site applies an expired grant in its turn (it admits nothing).
    assert!(check_next(&e, &s1, 4).is_ok());
}

#[test]
fn a_gap_in_the_sequence_is_refused_naming_what_is_missing() {
    let e = grant("s1", 5);
    let s1 = SiteId::new("s1").unwrap();
    let one = check_next(&e, &s1, 3).unwrap_err();
    assert_eq!(one, EntitlementError::MissingSequence { found: 5, last: 3 });
    assert!(
        one.to_string()
            .starts_with("package 4 is missing: import it first"),
        "{one}"
    );
    let many = check_next(&e, &s1, 0).unwrap_err().to_string();
    assert!(
        many.starts_with("packages 1 to 4 are missing: import them first, in order"),
        "{many}"
    );
    assert!(check_applicable(&e, &s1, 1, 500).is_err());
}

#[test]
fn amendments_top_up_move_suspend_and_revoke() {
    let Action::Grant(g) = grant("s1", 1).action else {
        unreachable!()
    };
    let st = GrantState::new(g, 1);
    let top_up = Amend {
        entitlement_id: "s1.1".into(),
        add_quota: 50,
        add_serial_ranges: vec![SerialRange {
            first: 500,
            last: 549,
        }],
        not_before: None,
        not_after: Some(20_000),
        status: None,
        revoke: None,
    };
    let st2 = amend(&st, &top_up, 2).unwrap();
    assert_eq!(st2.grant.quota, 150);
    assert_eq!(st2.grant.not_after, 20_000);
    assert_eq!(st2.grant.serial_ranges.len(), 2);
    let overlapping = Amend {
        add_serial_ranges: vec![SerialRange {
            first: 100,
            last: 149,
        }],
        ..top_up.clone()
    };
    assert!(amend(&st2, &overlapping, 3).is_err());
    let suspend = Amend {
        entitlement_id: "s1.1".into(),
        add_quota: 0,
        add_serial_ranges: vec![],
        not_before: None,
        not_after: None,
        status: Some(Status::Suspended),
        revoke: None,
    };
    let st3 = amend(&st2, &suspend, 3).unwrap();
    assert_eq!(st3.status, Status::Suspended);
    let revoke = Amend {
        status: Some(Status::Revoked),
        ..suspend.clone()
    };
    let st4 = amend(&st3, &revoke, 4).unwrap();
    let resume = Amend {
        status: Some(Status::Active),
        ..suspend
    };
    assert_eq!(
        amend(&st4, &resume, 5),
        Err(EntitlementError::Revoked("s1.1".into()))
    );
}

fn revoking(serials: Vec<u64>, all: bool, status: Option<Status>) -> Amend {
    Amend {
        entitlement_id: "s1.1".into(),
        add_quota: 0,
        add_serial_ranges: vec![],
        not_before: None,
        not_after: None,
        status,
        revoke: Some(DeviceRevocation {
            revoked_at: 5_000,
            device_serials: serials,
            all,
        }),
    }
}

fn package(a: Amend) -> Entitlement {
    Entitlement {
        action: Action::Amend(a),
        ..grant("s1", 2)
    }
}

#[test]
fn device_revocations() {
    let Action::Grant(g) = grant("s1", 1).action else {
        unreachable!()
    };
    let st = GrantState::new(g, 1);
    // Two devices; they stay revoked through later amendments, with HQ's time.
    let a = revoking(vec![3, 7], false, None);
    assert!(package(a.clone()).validate().is_ok());
    let st2 = amend(&st, &a, 2).unwrap();
    assert_eq!(st2.device_revoked_at(3), Some(5_000));
    assert_eq!(st2.device_revoked_at(4), None);
    assert_eq!(st2.status, Status::Active);
    // Again, or outside the grant's ranges: refused.
    assert!(amend(&st2, &revoking(vec![7], false, None), 3).is_err());
    assert!(amend(&st2, &revoking(vec![101], false, None), 3).is_err());
    // A revoked grant still takes device revocations, and nothing else.
    let st3 = amend(&st2, &revoking(vec![], true, Some(Status::Revoked)), 3).unwrap();
    assert_eq!(st3.device_revoked_at(99), Some(5_000));
    assert!(amend(&st3, &revoking(vec![9], false, None), 4).is_err());
    let stopped = amend(
        &st2,
        &Amend {
            revoke: None,
            ..revoking(vec![], false, Some(Status::Revoked))
        },
        3,
    )
    .unwrap();
    assert!(amend(&stopped, &revoking(vec![9], false, None), 4).is_ok());
    // Malformed revocations never validate.
    for bad in [
        revoking(vec![7, 3], false, None),
        revoking(vec![3, 3], false, None),
        revoking(vec![], false, None),
        revoking(vec![3], true, Some(Status::Revoked)),
        revoking(vec![], true, None),
        revoking((1..=MAX_REVOKE_DEVICES as u64 + 1).collect(), false, None),
    ] {
        let e = package(bad);
        assert!(matches!(e.validate(), Err(EntitlementError::Invalid(_))));
        assert!(Entitlement::from_cbor(&e.to_cbor()).is_err());
    }
    // A state stored before revocations existed still loads.
    let old = serde_json::json!({"grant": st.grant, "status": "active", "last_sequence": 1});
    let back: GrantState = serde_json::from_value(old).unwrap();
    assert_eq!(back, st);
}
