//! `redirector generate` (for packaging): the man pages, one per command, and the bash,
//! zsh and fish completions, written from the same clap definitions as `--help`
//! (clap_mangen, clap_complete), so they cannot drift from the command line.
//!
//! It is not one of [`super::Command`]'s verbs, so that it appears in neither `--help`,
//! the man pages nor the completions it writes: [`requested`] recognises it first.

use std::path::PathBuf;

use anyhow::Context as _;
use clap_complete::Shell;

/// Arguments of `redirector generate`.
#[derive(Debug, clap::Parser)]
#[command(name = "redirector generate")]
pub struct GenerateArgs {
    /// Write the man pages here: redirector.1 and redirector-COMMAND.1 for every command.
    #[arg(long, value_name = "DIR")]
    pub man: Option<PathBuf>,

    /// Write the completions here: redirector.bash, _redirector (zsh), redirector.fish.
    #[arg(long, value_name = "DIR")]
    pub completions: Option<PathBuf>,
}

/// `redirector generate …`: its arguments (clap exits with a message if they are bad);
/// any other command line: `None`.
pub fn requested() -> Option<GenerateArgs> {
    use clap::Parser as _;
    let mut args = std::env::args_os().skip(1).peekable();
    (args.peek()? == "generate").then(|| GenerateArgs::parse_from(args))
}

/// Writes what was asked for.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.man.is_some() || args.completions.is_some(),
        "give --man DIR, --completions DIR or both"
    );
    if let Some(dir) = &args.man {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        clap_mangen::generate_to(super::command(), dir)
            .with_context(|| format!("writing the man pages to {}", dir.display()))?;
    }
    if let Some(dir) = &args.completions {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut super::command(), "redirector", dir)
                .with_context(|| format!("writing the {shell} completions to {}", dir.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command has its page; `generate` is in neither the pages nor the completions.
    #[test]
    fn one_man_page_per_command() {
        let dir = std::env::temp_dir().join(format!("rdr-gen-{}", std::process::id()));
        run(GenerateArgs {
            man: Some(dir.join("man")),
            completions: Some(dir.join("completions")),
        })
        .unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(dir.join("man"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        let mut expected: Vec<String> = super::super::command()
            .get_subcommands()
            .map(|c| format!("redirector-{}.1", c.get_name()))
            .chain(["redirector.1".to_string()])
            .collect();
        expected.sort();
        assert_eq!(pages, expected);
        let run_page = std::fs::read_to_string(dir.join("man/redirector-run.1")).unwrap();
        assert!(run_page.contains("sniff\\-listen"), "{run_page}");
        let mut completions: Vec<String> = std::fs::read_dir(dir.join("completions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        completions.sort();
        assert_eq!(
            completions,
            ["_redirector", "redirector.bash", "redirector.fish"]
        );
        let fish = std::fs::read_to_string(dir.join("completions/redirector.fish")).unwrap();
        assert!(
            fish.contains("\"disable\"") && !fish.contains("generate"),
            "{fish}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
