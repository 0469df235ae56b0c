#!/bin/sh
# The stamp walkthrough: HQ and one factory site, by hand, from an empty directory to a device the
# cloud admits. Every command is the real one; `cargo test` runs this file (the README shows it).
#
#   docs/walkthrough.sh [DIR]     # works in DIR (new or empty), else in a new temporary directory
#
# It needs `stamp` on PATH (or STAMP=/path/to/stamp) and openssl. Each step prints what it did.
set -eu

STAMP=${STAMP:-stamp}
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK" && cd "$WORK"
echo "Working in $WORK"

# The key stores' passphrase, in a file only you can read (never on the command line).
umask 077
echo 'a long passphrase, not this one' > pass
export STAMP_PASSPHRASE_FILE="$PWD/pass"
# A field of a command's --json output (one "name": "value" line).
field() { sed -n "s/^ *\"$1\": \"\([^\"]*\)\".*/\1/p" | head -n 1; }

# At HQ: create the OEM root and the HQ authority. The root fingerprint goes to every site.
ROOT=$("$STAMP" --json hq init --dir hq --org "Acme Sensors" | field root_fingerprint)

# At the factory: create the site's keys and its request. Read the fingerprint out to HQ by phone.
REQUEST=$("$STAMP" --json site init --dir site --site-id shenzhen-1 -o request.json \
    | field request_fingerprint)

# At HQ: check the request (its fingerprint must be the one the site read out) and issue the
# site's certificates. A lost credentials file is written again, byte-identical, from HQ's records.
"$STAMP" hq enroll-site --dir hq request.json -o credentials.json --fingerprint "$REQUEST"
"$STAMP" hq export-credentials --dir hq --site shenzhen-1 -o credentials-again.json
cmp credentials.json credentials-again.json

# At the factory: install the credentials, pinning the root fingerprint HQ gave you.
"$STAMP" site install --dir site credentials.json --root-fingerprint "$ROOT"
openssl verify -x509_strict -CAfile site/certs/oem-root.pem site/certs/site-issuing-ca.pem

# At HQ: allow the site 1000 thermostats, at most 600 a minute, for a year; seal it to the site.
"$STAMP" hq entitle --dir hq --site shenzhen-1 --product thermo-2 --quota 1000 --rate 600/minute \
    --device-data cloud_endpoint=mqtts://iot.example.com:8883 -o ent-1.cose

# At the factory: verify the package (HQ's signature, addressed here, in sequence), apply it.
"$STAMP" site import --dir site ent-1.cose
"$STAMP" site status --dir site

# At the factory: give a line station its identity and run the site service (mutual TLS). Here it
# and its health/metrics listener take free loopback ports; in a factory, the service listens on
# the line's network (--listen, or its config) and health on 127.0.0.1:8444.
"$STAMP" site add-station --dir site --name line-1 -o station-1
"$STAMP" site serve --dir site --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 \
    --default-entitlement shenzhen-1.1 > serve.out 2> serve.log &
SERVE=$!
trap 'kill "$SERVE" 2> /dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q listening serve.out && break
    kill -0 "$SERVE" || exit 1
    sleep 0.1
done
URL=$(sed -n 's/.*listening on \(https:[^ ]*\).*/\1/p' serve.out)

# On the line: 100 devices make their own keys and enroll through the station (EST).
"$STAMP" device simulate --server "$URL" --station-dir station-1 --count 100 -o devices

# Stop the service (SIGTERM: it finishes what it has begun); the offline commands need the site.
kill "$SERVE" && wait "$SERVE" || true
trap - EXIT

# At the factory, offline: certificates for devices' CSRs (PEM or DER files), e.g. from a
# programming station. Here openssl makes three (the keys stay with the devices, not in csrs/).
mkdir csrs device-keys
for n in 1 2 3; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=d000$n" \
        -keyout "device-keys/d000$n.key.pem" -out "csrs/d000$n.csr" 2> /dev/null
done
"$STAMP" site issue --dir site --entitlement shenzhen-1.1 --csr csrs -o certs

# Later, at HQ: top up the quota with a new package; the site applies packages strictly in
# sequence. A lost package is written again, byte-identical, from HQ's records.
"$STAMP" hq amend --dir hq --entitlement shenzhen-1.1 --add-quota 500 -o ent-2.cose
"$STAMP" hq export-package --dir hq --site shenzhen-1 --sequence 2 -o ent-2-again.cose
cmp ent-2.cose ent-2-again.cose
"$STAMP" site import --dir site ent-2.cose

# At the factory: export the audit log for HQ (signed by the site, encrypted to HQ).
"$STAMP" site export-audit --dir site -o audit-1.bundle

# At HQ: verify the bundle and check that the site kept its entitlements (exit 1 on any
# violation); every genuine device goes into HQ's registry.
"$STAMP" hq reconcile --dir hq audit-1.bundle
"$STAMP" hq devices --dir hq --site shenzhen-1 | head -n 3

# A stolen device: HQ revokes it (the next registry refuses it) and carries the revocation to the
# site, which lists it in its CRL for X.509 verifiers.
STOLEN=$(sed -n 's/^ *"device_serial": \([0-9]*\).*/\1/p' certs/d0003.stamp.json)
"$STAMP" hq revoke-device --dir hq --serial "$STOLEN" --reason stolen --site-update revoke-1.cose
"$STAMP" site import --dir site revoke-1.cose
"$STAMP" site crl --dir site -o site.crl
"$STAMP" site status --dir site

# HQ and the site agree: the next audit bundle reconciles clean, the revocation applied.
"$STAMP" site export-audit --dir site -o audit-2.bundle
"$STAMP" hq reconcile --dir hq audit-2.bundle

# At HQ: a signed registry for the cloud edge. There, a genuine device is admitted and the
# stolen one refused (exit 1).
"$STAMP" hq export --dir hq --format registry -o registry.cose
"$STAMP" cloud verify --registry registry.cose --root-fingerprint "$ROOT" certs/d0001.crt.pem
if "$STAMP" cloud verify --registry registry.cose --root-fingerprint "$ROOT" certs/d0003.crt.pem; then
    echo "the stolen device was admitted" >&2
    exit 1
fi
echo "Walkthrough done in $WORK"
