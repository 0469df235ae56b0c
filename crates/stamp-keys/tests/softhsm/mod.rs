//! A SoftHSM2 set up by the test itself: a temporary token directory and configuration, tokens
//! made with softhsm2-util, the module from `TEST_PKCS11_MODULE` or Debian's default path.
#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use stamp_keys::pkcs11::{Pin, PinSource, Pkcs11Config, Pkcs11Store, Pkcs11Uri};

pub const USER_PIN: &str = "1234";
pub const SO_PIN: &str = "12345678";

const HOW: &str = "SoftHSM2 is required by the PKCS#11 tests; run scripts/test, which installs it \
                   (apt-get install softhsm2 opensc)";

pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub module: PathBuf,
}

/// The module path: `$TEST_PKCS11_MODULE`, else Debian's SoftHSM2.
pub fn module_path() -> PathBuf {
    let m = std::env::var_os("TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(m.exists(), "PKCS#11 module {} not found. {HOW}", m.display());
    m
}

/// Sets up SoftHSM2 for this test process (once): a configuration listing `mechanisms` (or all),
/// and one initialised token per label. Must run before the module is first loaded.
pub fn softhsm_with(labels: &[&str], mechanisms: Option<&str>) -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let module = module_path();
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        let mut text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        );
        if let Some(m) = mechanisms {
            text.push_str(&format!("slots.mechanisms = {m}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        // Before any thread loads the module (this runs inside the OnceLock).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for label in labels {
            init_token(&conf, label);
        }
        SoftHsm { dir, module }
    })
}

/// Makes a token with softhsm2-util.
pub fn init_token(conf: &Path, label: &str) {
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run softhsm2-util ({e}). {HOW}"));
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A store with the given PIN whose new keys go to `token`.
pub fn store(hsm: &SoftHsm, token: &str, pin: &str) -> Pkcs11Store {
    let cfg = Pkcs11Config {
        module: Some(hsm.module.clone()),
        pin: PinSource::Given(Pin::new(pin.to_owned())),
        max_sessions: 4,
    };
    Pkcs11Store::new(
        cfg,
        Some(Pkcs11Uri::parse_token(&format!("pkcs11:token={token}")).unwrap()),
    )
}

/// Writes a 0600 file (stamp-testkit's, shared with the CLI tests).
#[allow(unused_imports)]
pub use stamp_testkit::secret_file;

/// A cryptoki session of this process on the token labelled `label`, logged in: an independent
/// look at what the store made.
pub fn raw_session(label: &str) -> cryptoki::session::Session {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::session::UserType;
    let ctx = Pkcs11::new(module_path()).unwrap();
    // The store may have initialised the module in this process already.
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == label)
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    let pin = cryptoki::types::AuthPin::from(USER_PIN.to_owned());
    match s.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    s
}

/// Runs openssl; fails the test with a clear message when it is missing.
pub fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl").args(args).output().unwrap_or_else(|e| {
        panic!("openssl is required by this test ({e}); run scripts/test, which installs it")
    })
}
