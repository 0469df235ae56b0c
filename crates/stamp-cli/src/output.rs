//! Printing results: text for people, one JSON object for scripts.

use std::io::{IsTerminal, Write};

use anyhow::bail;
use serde::Serialize;

/// Prints `value` as JSON when `json`, otherwise runs `text` (which prints with [`outln!`]).
pub fn emit<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> std::io::Result<()>,
) -> anyhow::Result<()> {
    if json {
        let mut out = stdout();
        // `io::Error::from` gives back a write's own error (serde_json's `source()` skips it).
        serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        text()?;
    }
    Ok(())
}

/// Standard output, locked, for the commands that write it themselves: a write that fails because
/// the reader closed it returns a [`std::io::ErrorKind::BrokenPipe`] error that carries
/// [`ClosedStdout`], which [`is_closed_stdout`] recognises (a broken pipe to a peer's socket does not
/// carry it, and stays an error).
pub fn stdout() -> Stdout {
    Stdout(std::io::stdout().lock())
}

/// See [`stdout`].
pub struct Stdout(std::io::StdoutLock<'static>);

/// Marks a write error as standard output closed by its reader.
#[derive(Debug)]
pub struct ClosedStdout;

impl std::fmt::Display for ClosedStdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for ClosedStdout {}

fn mark(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, ClosedStdout)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf).map_err(mark)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Writes `args` to standard output, returning the write error (`println!` would panic on it).
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) -> std::io::Result<()> {
    let mut out = stdout();
    out.write_fmt(args)?;
    if newline {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `println!` that returns the [`std::io::Result`] of the write instead of panicking, so a closed
/// standard output reaches [`is_closed_stdout`] as an error.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` that returns the [`std::io::Result`] of the write, like [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*), false)
    };
}

/// Exit status when standard output was closed by its reader (as a shell reports SIGPIPE): the
/// command's work is done but its report was not delivered, so it is not plain success.
pub const CLOSED_STDOUT_EXIT: u8 = 141;

/// Whether `e` is, or was caused by, a write to a standard output its reader closed
/// (`stamp hq devices | head`): a [`std::io::ErrorKind::BrokenPipe`] error from [`stdout`]
/// (carrying [`ClosedStdout`]) anywhere in the error chain. Rust ignores SIGPIPE, so such writes
/// fail with `EPIPE`; `main` then stops quietly, without an
/// error report, with [`CLOSED_STDOUT_EXIT`]. Whatever the command did before printing is done
/// (every command prints its result last).
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::BrokenPipe
                && io.get_ref().is_some_and(|inner| inner.is::<ClosedStdout>())
        })
    })
}

/// A failure whose details the command already printed in its report (the JSON report carries
/// `"ok": false`): exit non-zero without a second JSON object.
#[derive(Debug)]
pub struct AlreadyReported(pub String);

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AlreadyReported {}

/// An error the command line itself finds, with a stable code: a usage error (a malformed value
/// found after parsing, exit status 2, code `usage`), or a refusal before any work is done
/// (`output-exists`, `unknown-entitlement`, ...; exit status 1).
#[derive(Debug)]
pub struct CliError {
    /// The stable code (`--json` prints it as `code`).
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl CliError {
    /// A malformed or missing value the parser could not catch: exit status 2.
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Self::refusal(USAGE, message)
    }

    /// A refusal with a stable code: exit status 1.
    pub fn refusal(code: &'static str, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(CliError {
            code,
            message: message.into(),
        })
    }
}

/// The code of a usage error (exit status 2).
pub const USAGE: &str = "usage";

/// Exit status of a usage error.
pub const USAGE_EXIT: u8 = 2;

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Whether `e` is a usage error (exit status 2).
pub fn is_usage(e: &anyhow::Error) -> bool {
    code(e) == Some(USAGE)
}

/// The stable code of the first error in the chain that has one (command-line, HQ, site, engine,
/// package and bundle errors), for scripts.
pub fn code(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|c| {
        if let Some(x) = c.downcast_ref::<CliError>() {
            Some(x.code)
        } else if let Some(x) = c.downcast_ref::<stamp_hq::HqError>() {
            Some(x.code())
        } else if let Some(x) = c.downcast_ref::<stamp_site::SiteError>() {
            Some(x.code())
        } else if let Some(x) = c.downcast_ref::<stamp_site::engine::IssueError>() {
            Some(x.code())
        } else if let Some(x) = c.downcast_ref::<stamp_site::entitlements::ImportError>() {
            Some(x.code())
        } else {
            c.downcast_ref::<stamp_hq::reconcile::Rejection>()
                .map(|x| x.code())
        }
    })
}

/// Reports an error: `{"error": ..., "code": ..., "causes": [...]}` on stdout with `--json` (`code`
/// when the error has a stable one), else on stderr, the code in parentheses.
pub fn error(json: bool, e: &anyhow::Error) {
    if json && e.downcast_ref::<AlreadyReported>().is_some() {
        return;
    }
    let code = code(e);
    if json {
        let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
        let mut v = serde_json::json!({ "error": e.to_string(), "causes": causes });
        if let Some(c) = code {
            v["code"] = serde_json::Value::from(c);
        }
        // A reader that went away (`stamp ... --json | head`) is not worth a panic.
        let _ = writeln!(std::io::stdout().lock(), "{v}");
    } else {
        match code {
            Some(c) => eprintln!("error: {e} ({c})"),
            None => eprintln!("error: {e}"),
        }
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
    }
}

/// Asks a yes/no question on the terminal; refuses when there is no terminal.
pub fn confirm(question: &str, how_to_skip: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("cannot ask for confirmation without a terminal: {how_to_skip}");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes" | "YES") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}

#[cfg(test)]
mod tests {
    use super::{is_closed_stdout, mark};
    use anyhow::Context;

    fn broken_pipe() -> std::io::Error {
        mark(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    #[test]
    fn a_broken_pipe_anywhere_in_the_chain_is_a_closed_stdout() {
        let direct = anyhow::Error::from(broken_pipe());
        assert!(is_closed_stdout(&direct));
        let wrapped = Err::<(), _>(broken_pipe())
            .context("cannot write the report")
            .unwrap_err();
        assert!(is_closed_stdout(&wrapped));
        let json = anyhow::Error::from(std::io::Error::from(serde_json::Error::io(broken_pipe())));
        assert!(is_closed_stdout(&json));
    }

    #[test]
    fn other_errors_are_not() {
        let other = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!is_closed_stdout(&other));
        assert!(!is_closed_stdout(&anyhow::anyhow!("Broken pipe")));
        // A peer that closed its socket is a failure, not a closed stdout.
        let socket = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!is_closed_stdout(&socket));
    }
}

/// `n` and the noun, singular for 1: "1 site", "3 sites", "0 devices".
pub fn count(n: u64, one: &str, many: &str) -> String {
    match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

/// A time as stamp prints it, in text and JSON alike: RFC 3339 in UTC to the second
/// (`2026-12-04T04:42:33Z`).
pub fn timestamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// [`timestamp`] of a time in milliseconds since the Unix epoch.
pub fn timestamp_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map_or_else(|_| format!("{ms} ms"), timestamp)
}

/// [`timestamp`] of an RFC 3339 text (as stored); the text itself if it does not parse.
pub fn timestamp_text(s: &str) -> String {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_or_else(|_| s.to_owned(), timestamp)
}

/// A measured figure as stamp reports it (JSON and text alike): `x` rounded to `places` decimals.
/// Durations in seconds go to the millisecond (3), latencies in milliseconds to the hundredth
/// (2), rates per second to the tenth (1).
pub fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// A simulation's figures, rounded as [`round`] says.
pub fn round_simulation(
    mut r: stamp_station::simulate::SimulationReport,
) -> stamp_station::simulate::SimulationReport {
    r.seconds = round(r.seconds, 3);
    r.devices_per_second = round(r.devices_per_second, 1);
    let l = &mut r.latency_ms;
    for v in [&mut l.p50, &mut l.p90, &mut l.p99, &mut l.max] {
        *v = round(*v, 2);
    }
    r
}

/// A grant's rate limits as "10/minute, 1000/day", or "unlimited".
pub fn rates(limits: &std::collections::BTreeMap<stamp_core::entitlement::RatePeriod, u64>) -> String {
    if limits.is_empty() {
        return "unlimited".to_owned();
    }
    limits
        .iter()
        .map(|(p, n)| format!("{n}/{}", p.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn counts_times_and_rates_read_as_text() {
        assert_eq!(count(1, "site", "sites"), "1 site");
        assert_eq!(count(0, "site", "sites"), "0 sites");
        assert_eq!(count(2, "device", "devices"), "2 devices");
        assert_eq!(timestamp_ms(1_764_823_353_999), "2025-12-04T04:42:33Z");
        assert_eq!(
            timestamp_text("2026-12-04T04:42:32.336715097Z"),
            "2026-12-04T04:42:32Z"
        );
        assert_eq!(
            timestamp_text("2026-12-04T06:42:32+02:00"),
            "2026-12-04T04:42:32Z"
        );
        assert_eq!(timestamp_text("not a time"), "not a time");
        assert_eq!(rates(&Default::default()), "unlimited");
        assert_eq!(round(9.924486665107398, 1), 9.9);
        assert_eq!(round(0.201521758, 3), 0.202);
    }
}
