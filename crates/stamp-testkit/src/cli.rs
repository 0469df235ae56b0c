//! Running the real `stamp` binary: a command builder in the style of ripgrep's `TestCommand`, and
//! the set-ups the CLI tests share (a ceremony, a second site, an imported entitlement).
//!
//! ```text
//! let c = ceremony(true);
//! let r = stamp(&c.pass).hq("entitle").dir(&c.hq).args(&["--site", "plant-7"]).json();
//! stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).fails("signature");
//! ```

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Output;

/// One run of `stamp --passphrase-file PASS ARGS...` being put together.
#[must_use = "a command does nothing until run with json(), output(), fails() or code()"]
pub struct Stamp {
    pass: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    removed: Vec<OsString>,
    stdin: Vec<u8>,
}

/// Starts a `stamp` command that reads its passphrase from `pass` (and never from the caller's
/// `STAMP_PASSPHRASE_FILE`); its stdin is empty.
pub fn stamp(pass: &Path) -> Stamp {
    Stamp {
        pass: Some(pass.to_owned()),
        args: Vec::new(),
        envs: Vec::new(),
        removed: Vec::new(),
        stdin: Vec::new(),
    }
}

/// Starts a `stamp` command given no passphrase at all (for commands that need none: `demo`,
/// `cloud`, `device`), not even through `STAMP_PASSPHRASE_FILE`.
pub fn stamp_bare() -> Stamp {
    Stamp {
        pass: None,
        args: Vec::new(),
        envs: Vec::new(),
        removed: Vec::new(),
        stdin: Vec::new(),
    }
}

impl Stamp {
    /// `hq SUBCOMMAND`.
    pub fn hq(self, sub: &str) -> Self {
        self.args(&["hq", sub])
    }
    /// `site SUBCOMMAND`.
    pub fn site(self, sub: &str) -> Self {
        self.args(&["site", sub])
    }
    /// `device SUBCOMMAND`.
    pub fn device(self, sub: &str) -> Self {
        self.args(&["device", sub])
    }
    /// `cloud SUBCOMMAND`.
    pub fn cloud(self, sub: &str) -> Self {
        self.args(&["cloud", sub])
    }
    /// `--dir DIR`.
    pub fn dir(self, dir: impl AsRef<Path>) -> Self {
        self.arg("--dir").arg(dir.as_ref())
    }
    /// One more argument (a path, a flag, a value).
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }
    /// More arguments, in order.
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(OsString::from));
        self
    }
    /// An environment variable for the run.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs.push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }
    /// An environment variable the run must not see.
    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.removed.push(k.as_ref().to_owned());
        self
    }
    /// What the run reads on stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    fn argv(&self) -> String {
        format!("{:?}", self.args)
    }

    /// The command as a `std::process::Command`, for runs a test spawns and watches (servers,
    /// runs it kills); stdin, stdout and stderr are the caller's to set.
    pub fn command(self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("stamp"));
        cmd.env_remove("STAMP_PASSPHRASE_FILE");
        for k in &self.removed {
            cmd.env_remove(k);
        }
        if let Some(pass) = &self.pass {
            cmd.arg("--passphrase-file").arg(pass);
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs it and returns what it did, whatever that was.
    pub fn output(self) -> Output {
        let stdin = self.stdin.clone();
        let mut cmd = assert_cmd::Command::from_std(self.command());
        cmd.write_stdin(stdin);
        cmd.output().unwrap()
    }

    /// Runs it with `--json` (first, as a global option), asserts success and returns the parsed
    /// output.
    pub fn json(mut self) -> serde_json::Value {
        self.args.insert(0, "--json".into());
        let argv = self.argv();
        let out = self.output();
        assert!(
            out.status.success(),
            "stamp {argv} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs it with `--json` and returns the exit code with the parsed output (`Null` when stdout
    /// is not JSON), for runs that may fail.
    pub fn code_json(mut self) -> (Option<i32>, serde_json::Value) {
        self.args.insert(0, "--json".into());
        let out = self.output();
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Runs it with `--json` and asserts that it failed with exit code 1 and the stable error
    /// code `code` (what scripts read); returns the JSON error for further checks.
    pub fn fails_with(mut self, code: &str) -> serde_json::Value {
        self.args.insert(0, "--json".into());
        let argv = self.argv();
        let out = self.output();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "stamp {argv}: no JSON error on stdout:\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(
            out.status.code(),
            Some(1),
            "error exit code of stamp {argv}: {v:#}"
        );
        assert_eq!(v["code"], code, "error code of stamp {argv}: {v:#}");
        v
    }

    /// Runs it and asserts that it failed with exit code 1 and an error (stderr, or stdout with
    /// `--json`) containing `needle`: for errors that have no stable code of their own (usage
    /// errors, and the text of hints).
    pub fn fails(self, needle: &str) {
        self.fails_exit(1, needle);
    }

    /// Runs it and asserts a usage error: exit code 2 and an error containing `needle` (a
    /// missing flag, or a malformed value found after parsing).
    pub fn usage_fails(self, needle: &str) {
        self.fails_exit(2, needle);
    }

    fn fails_exit(self, code: i32, needle: &str) {
        let argv = self.argv();
        let out = self.output();
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "stamp {argv} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "error exit code of stamp {argv}:\n{text}"
        );
        assert!(
            text.contains(needle),
            "stamp {argv}: expected error containing {needle:?}, got:\n{text}"
        );
    }
}

/// A path as `&str` (test paths are UTF-8), for argument lists.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `dir` with its contents, skipping SQLite's transient -wal/-shm files, so two
/// snapshots are equal exactly when the state did not change.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let name = p.to_string_lossy().into_owned();
            if p.is_dir() {
                walk(base, &p, out);
            } else if !name.ends_with("-wal") && !name.ends_with("-shm") {
                out.insert(
                    p.strip_prefix(base).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A finished ceremony in a temp directory: HQ, one enrolled (and maybe installed) site plant-7.
pub struct Ceremony {
    /// The temp directory holding everything.
    pub tmp: tempfile::TempDir,
    /// The passphrase file every role uses.
    pub pass: PathBuf,
    /// HQ's directory.
    pub hq: PathBuf,
    /// Site plant-7's directory.
    pub site: PathBuf,
    /// The site's enrolment request.
    pub request: PathBuf,
    /// The credentials HQ issued for it.
    pub credentials: PathBuf,
    /// Output of `hq init`.
    pub hq_init: serde_json::Value,
    /// Output of `site init`.
    pub site_init: serde_json::Value,
    /// Output of `hq enroll-site`.
    pub enroll: serde_json::Value,
    /// Output of `site install`, when installed.
    pub install: Option<serde_json::Value>,
}

impl Ceremony {
    /// The root certificate's fingerprint, as `hq init` printed it.
    pub fn root_fingerprint(&self) -> String {
        self.hq_init["root_fingerprint"].as_str().unwrap().to_owned()
    }
    /// The root certificate's file.
    pub fn root_cert(&self) -> PathBuf {
        PathBuf::from(self.hq_init["root_cert"].as_str().unwrap())
    }
    /// A command with this ceremony's passphrase.
    pub fn stamp(&self) -> Stamp {
        stamp(&self.pass)
    }

    /// `site init` of a site `id` in the directory `name` of the temp directory, its enrolment
    /// request written beside it as `NAME-req.json`; returns both paths.
    pub fn init_site(&self, id: &str, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.tmp.path().join(name);
        let req = self.tmp.path().join(format!("{name}-req.json"));
        self.stamp()
            .site("init")
            .dir(&dir)
            .args(&["--site-id", id, "-o", s(&req)])
            .json();
        (dir, req)
    }

    /// A site `id` initialised, enrolled (`--yes`) and installed beside plant-7; returns its
    /// directory.
    pub fn second_site(&self, id: &str) -> PathBuf {
        let (dir, req) = self.init_site(id, id);
        let creds = self.tmp.path().join(format!("{id}-creds.json"));
        self.stamp()
            .hq("enroll-site")
            .dir(&self.hq)
            .args(&[s(&req), "-o", s(&creds), "--yes"])
            .json();
        let fp = self.root_fingerprint();
        self.stamp()
            .site("install")
            .dir(&dir)
            .args(&[s(&creds), "--root-fingerprint", &fp])
            .json();
        dir
    }

    /// `hq entitle --site plant-7 --product thermo-2 EXTRA... -o NAME.cose`, then `site import` of
    /// the package at plant-7; returns the package file and `hq entitle`'s output.
    pub fn entitle(&self, name: &str, extra: &[&str]) -> (PathBuf, serde_json::Value) {
        let pkg = self.tmp.path().join(format!("{name}.cose"));
        let r = self
            .stamp()
            .hq("entitle")
            .dir(&self.hq)
            .args(&["--site", "plant-7", "--product", "thermo-2"])
            .args(extra)
            .args(&["-o", s(&pkg)])
            .json();
        self.stamp().site("import").dir(&self.site).arg(&pkg).json();
        (pkg, r)
    }
}

/// HQ init (org "Acme Sensors"), site init (plant-7), enroll with the fingerprint confirmed; site
/// install too when `install`. Every role uses the passphrase "demo passphrase 1".
pub fn ceremony(install: bool) -> Ceremony {
    let tmp = tempfile::tempdir().unwrap();
    let pass = crate::secret_file(tmp.path(), "pass", "demo passphrase 1");
    let hq = tmp.path().join("hq");
    let site = tmp.path().join("site");
    let request = tmp.path().join("request.json");
    let credentials = tmp.path().join("credentials.json");
    let hq_init = stamp(&pass)
        .hq("init")
        .dir(&hq)
        .args(&["--org", "Acme Sensors"])
        .json();
    let site_init = stamp(&pass)
        .site("init")
        .dir(&site)
        .args(&["--site-id", "plant-7", "-o", s(&request)])
        .json();
    let fp = site_init["request_fingerprint"].as_str().unwrap().to_owned();
    let enroll = stamp(&pass)
        .hq("enroll-site")
        .dir(&hq)
        .args(&[s(&request), "-o", s(&credentials), "--fingerprint", &fp])
        .json();
    let mut c = Ceremony {
        tmp,
        pass,
        hq,
        site,
        request,
        credentials,
        hq_init,
        site_init,
        enroll,
        install: None,
    };
    if install {
        let root = c.root_fingerprint();
        c.install = Some(
            c.stamp()
                .site("install")
                .dir(&c.site)
                .args(&[s(&c.credentials), "--root-fingerprint", &root])
                .json(),
        );
    }
    c
}

/// Runs openssl; panics with a clear message when it is missing.
pub fn openssl(args: &[&str]) -> Output {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is required by this test ({e}); run the README's test command, which installs it")
        })
}
