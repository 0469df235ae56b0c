//! A closed standard output (`stamp hq devices | head -1`) ends the real binary quietly: no panic
//! message, no error report, what the command did before printing is done, and the status is 141
//! (as a shell reports SIGPIPE; the pipeline's own status is head's, 0).

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{s, secret_file};

/// Runs stamp with `--passphrase-file pass` and `args`, its stdout a pipe whose reading end is
/// already closed, so its first write to stdout fails with `EPIPE`.
fn stamp_into_closed_pipe(pass: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("stamp"));
    cmd.env_remove("STAMP_PASSPHRASE_FILE")
        .arg("--passphrase-file")
        .arg(pass)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    let out = cmd.output().unwrap();
    drop(cmd);
    out
}

/// The status of a command whose reader closed its stdout.
const CLOSED_STDOUT_EXIT: i32 = 141;

fn assert_quiet_stop(args: &[&str], out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(CLOSED_STDOUT_EXIT),
        "stamp {args:?} into a closed pipe: {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "stamp {args:?} into a closed pipe wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn closed_stdout_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = secret_file(tmp.path(), "pass", "correct horse battery staple");
    let hq = tmp.path().join("hq");

    // The command's work is done before its report fails to print.
    let init = ["hq", "init", "--dir", s(&hq), "--org", "Acme"];
    let out = stamp_into_closed_pipe(&pass, &init);
    assert_quiet_stop(&init, &out);
    assert!(hq.join("stamp-hq.db").is_file(), "hq init did its work");

    // Text through `outln!`, a streamed listing (text and JSON), and an `emit` JSON report.
    for args in [
        vec!["hq", "sites", "--dir", s(&hq)],
        vec!["hq", "devices", "--dir", s(&hq)],
        vec!["--json", "hq", "devices", "--dir", s(&hq)],
        vec!["--json", "hq", "entitlements", "--dir", s(&hq)],
    ] {
        let out = stamp_into_closed_pipe(&pass, &args);
        assert_quiet_stop(&args, &out);
    }

    // A failure is still a failure when stdout is closed: the error goes to stderr.
    let missing = tmp.path().join("nothing-here");
    let args = ["hq", "devices", "--dir", s(&missing)];
    let out = stamp_into_closed_pipe(&pass, &args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a stamp HQ directory"));
}

#[test]
fn head_in_a_shell_pipeline_sees_a_quiet_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = secret_file(tmp.path(), "pass", "correct horse battery staple");
    let hq = tmp.path().join("hq");
    let stamp = assert_cmd::cargo::cargo_bin("stamp");
    let rc = tmp.path().join("rc");
    // `{ stamp ...; echo $? >rc; } | head -1`: the shell reports head's status, so stamp's own is
    // written to a file.
    let script = r#"{ "$0" --passphrase-file "$1" hq init --dir "$2" --org Acme 2>"$3.err"; echo $? >"$3"; } | head -1"#;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&stamp)
        .arg(&pass)
        .arg(&hq)
        .arg(&rc)
        .env_remove("STAMP_PASSPHRASE_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    // 0 when stamp wrote everything before head exited, 141 when head had gone first.
    let status = std::fs::read_to_string(&rc).unwrap();
    assert!(matches!(status.trim(), "0" | "141"), "stamp's status: {status}");
    let err = std::fs::read_to_string(format!("{}.err", rc.display())).unwrap();
    assert!(err.is_empty(), "stderr: {err}");
}
