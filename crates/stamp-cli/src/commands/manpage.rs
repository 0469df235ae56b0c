//! `stamp manpage`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

use crate::Globals;

/// Print stamp's manual page (roff, section 1) on standard output, or, with `--dir`, write one
/// page per command into a directory: `stamp.1`, `stamp-site.1`, `stamp-site-serve.1`, ...
/// (replacing pages of the same name). Read one with `man -l stamp.1`; packagers install them in
/// /usr/share/man/man1.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Write every command's page into DIR (which must exist) instead of printing stamp.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Runs `stamp manpage`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = a.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        let mut out = crate::output::stdout();
        out.write_all(&page)?;
        out.flush()?;
        return Ok(());
    };
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory; create it first", dir.display());
    }
    let mut written = Vec::new();
    let mut pending = vec![cmd];
    while let Some(cmd) = pending.pop() {
        pending.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let man = clap_mangen::Man::new(cmd);
        let mut page = Vec::new();
        man.render(&mut page)?;
        let path = dir.join(man.get_filename());
        stamp_store::write_atomic(&path, &page, 0o644)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    written.sort();
    let pages: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    crate::output::emit(g.json, &serde_json::json!({ "pages": pages }), || {
        outln!("{} manual pages written to {}", pages.len(), dir.display())?;
        Ok(())
    })
}
