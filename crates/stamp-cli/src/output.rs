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
        let mut out = std::io::stdout().lock();
        // `io::Error::from` gives back a write's own error (serde_json's `source()` skips it).
        serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        text()?;
    }
    Ok(())
}

/// Writes `args` to standard output, returning the write error (`println!` would panic on it).
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
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
/// (`stamp hq devices | head`): [`std::io::ErrorKind::BrokenPipe`] anywhere in the error chain.
/// Rust ignores SIGPIPE, so such writes fail with `EPIPE`; `main` then stops quietly, without an
/// error report, with [`CLOSED_STDOUT_EXIT`]. Whatever the command did before printing is done
/// (every command prints its result last).
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let kind = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => Some(io.kind()),
            // serde_json's `source()` skips the io::Error it wraps.
            None => cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind),
        };
        kind == Some(std::io::ErrorKind::BrokenPipe)
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

/// Reports an error: `{"error": ..., "causes": [...]}` on stdout with `--json`, else on stderr.
pub fn error(json: bool, e: &anyhow::Error) {
    if json && e.downcast_ref::<AlreadyReported>().is_some() {
        return;
    }
    if json {
        let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
        let v = serde_json::json!({ "error": e.to_string(), "causes": causes });
        // A reader that went away (`stamp ... --json | head`) is not worth a panic.
        let _ = writeln!(std::io::stdout().lock(), "{v}");
    } else {
        eprintln!("error: {e}");
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
    use super::is_closed_stdout;
    use anyhow::Context;

    fn broken_pipe() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::BrokenPipe)
    }

    #[test]
    fn a_broken_pipe_anywhere_in_the_chain_is_a_closed_stdout() {
        let direct = anyhow::Error::from(broken_pipe());
        assert!(is_closed_stdout(&direct));
        let wrapped = Err::<(), _>(broken_pipe())
            .context("cannot write the report")
            .unwrap_err();
        assert!(is_closed_stdout(&wrapped));
        let json = anyhow::Error::from(serde_json::Error::io(broken_pipe()));
        assert!(is_closed_stdout(&json));
    }

    #[test]
    fn other_errors_are_not() {
        let other = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!is_closed_stdout(&other));
        assert!(!is_closed_stdout(&anyhow::anyhow!("Broken pipe")));
    }
}
