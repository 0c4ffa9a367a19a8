//! `blogctl man --dir DIR`: man pages for `blogctl` and each of its subcommands, generated from
//! the clap definitions (clap_mangen), so they always match the command line.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use color_eyre::Result;
use color_eyre::eyre::WrapErr;

use crate::cli::Cli;
use crate::error::Failure;
use crate::output::print_line;

/// Arguments of `blogctl man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (`blogctl.1`, `blogctl-post-create.1`, ...); it
    /// must exist.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn run(args: &ManArgs) -> Result<()> {
    if !args.dir.is_dir() {
        return Err(
            Failure::invalid(format!("--dir {} is not a directory", args.dir.display())).into(),
        );
    }
    let mut written = Vec::new();
    write_pages(Cli::command(), "blogctl", &args.dir, &mut written)?;
    for path in written {
        print_line(&path.display().to_string())?;
    }
    Ok(())
}

/// Writes the page of `command`, whose path is `name` (`blogctl-post-create`), then of each of
/// its subcommands.
fn write_pages(
    command: clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let command = command
        .disable_help_subcommand(true)
        .display_name(name.to_owned())
        .bin_name(name.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .title(name.to_uppercase())
        .render(&mut page)?;
    std::fs::write(&path, page).wrap_err_with(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in command.get_subcommands() {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_pages(sub.clone(), &sub_name, dir, written)?;
    }
    Ok(())
}
