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
