//! Printing results: text for people, one JSON object for scripts.

use std::io::{IsTerminal, Write};

use anyhow::bail;
use serde::Serialize;

/// Prints `value` as JSON when `json`, otherwise runs `text`.
pub fn emit<T: Serialize>(json: bool, value: &T, text: impl FnOnce()) -> anyhow::Result<()> {
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
    } else {
        text();
    }
    Ok(())
}

/// Exit status when standard output was closed by its reader (as a shell reports SIGPIPE).
pub const CLOSED_STDOUT_EXIT: i32 = 141;

/// Makes a closed standard output (`stamp hq devices | head`) end the process quietly with
/// [`CLOSED_STDOUT_EXIT`], as command-line tools do, instead of a panic message: Rust ignores
/// SIGPIPE, so `println!` panics with "failed printing to stdout" on a closed pipe. Whatever the
/// command did before printing is done (every command prints its result last).
pub fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(CLOSED_STDOUT_EXIT);
        }
        default(info)
    }));
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
