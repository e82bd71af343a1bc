//! `chainboot generate` (hidden): the man pages and shell completions, generated from the
//! command-line definition itself so they can never drift from it. A subcommand rather than a
//! build script because the definition lives in the binary (its arguments come from several
//! modules); packaging runs it once on the built binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

#[derive(Debug, clap::Subcommand)]
pub enum GenerateCommand {
    /// Man pages: chainboot.1 and one chainboot-SUBCOMMAND.1 per subcommand, into DIR.
    Man { dir: PathBuf },
    /// The completion script for SHELL on standard output.
    Completions { shell: Shell },
}

pub fn run(cmd: &GenerateCommand, cli: clap::Command) -> ExitCode {
    let result = match cmd {
        GenerateCommand::Man { dir } => man_pages(dir, cli),
        GenerateCommand::Completions { shell } => {
            let mut cli = cli;
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cli, "chainboot", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chainboot generate: {e}");
            ExitCode::from(1)
        }
    }
}

fn man_pages(dir: &Path, cli: clap::Command) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Subcommands' pages are named chainboot-NAME, and the hidden ones have none.
    clap_mangen::generate_to(cli, dir)?;
    Ok(())
}
