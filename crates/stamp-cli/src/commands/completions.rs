//! `stamp completions`

use std::io::Write;

use clap::CommandFactory;

use crate::Globals;

/// Print a shell completion script for stamp on standard output. Install it where your shell
/// looks: bash `stamp completions bash > /usr/share/bash-completion/completions/stamp`, zsh
/// `stamp completions zsh > /usr/share/zsh/vendor-completions/_stamp` (a directory in $fpath),
/// fish `stamp completions fish > /usr/share/fish/vendor_completions.d/stamp.fish`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shell.
    #[arg(value_name = "SHELL", value_parser = ["bash", "zsh", "fish"])]
    shell: String,
}

/// Runs `stamp completions`.
pub fn run(a: Args, _g: &Globals) -> anyhow::Result<()> {
    let shell = match a.shell.as_str() {
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        _ => clap_complete::Shell::Bash,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "stamp", &mut script);
    let mut out = crate::output::stdout();
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}
