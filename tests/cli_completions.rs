//! `dfcache completions SHELL` prints a script the shell understands: bash
//! sourcing it completes subcommands and flags; zsh and fish get scripts
//! that name the same subcommands.

mod common;

use std::process::Command;

use common::{bin, failure, succeeded};

fn script(shell: &str) -> String {
    let out = Command::new(bin())
        .args(["completions", shell])
        .output()
        .expect("run dfcache completions");
    succeeded(&out, format_args!("dfcache completions {shell}"))
}

/// What bash offers after `words` (the last one is being completed).
fn bash_completes(words: &[&str]) -> Vec<String> {
    let words: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source <(\"$0\" completions bash) && COMP_WORDS=({words}) && COMP_CWORD={cword} && \
         COMP_LINE=\"${{COMP_WORDS[*]}}\" && COMP_POINT=${{#COMP_LINE}} && \
         _dfcache dfcache \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" && \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = words.join(" "),
        cword = words.len() - 1,
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(program)
        .arg(bin())
        .output()
        .expect("run bash");
    succeeded(&out, "bash completion")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    let subcommands = bash_completes(&["dfcache", ""]);
    for want in [
        "import",
        "export",
        "stat",
        "ls",
        "rm",
        "warmup",
        "serve",
        "mount",
        "completions",
    ] {
        assert!(
            subcommands.iter().any(|c| c == want),
            "{want} missing: {subcommands:?}"
        );
    }
    let mount_flags = bash_completes(&["dfcache", "mount", "--"]);
    for want in [
        "--cache-size",
        "--allow-other",
        "--spool",
        "--prefetch-trees",
    ] {
        assert!(
            mount_flags.iter().any(|c| c == want),
            "{want} missing: {mount_flags:?}"
        );
    }
    let shells = bash_completes(&["dfcache", "completions", ""]);
    for want in ["bash", "zsh", "fish"] {
        assert!(
            shells.iter().any(|c| c == want),
            "{want} missing: {shells:?}"
        );
    }
}

#[test]
fn zsh_and_fish_scripts_name_every_subcommand() {
    let zsh = script("zsh");
    assert!(zsh.starts_with("#compdef dfcache"), "{zsh}");
    let fish = script("fish");
    assert!(fish.contains("complete -c dfcache"), "{fish}");
    for sub in [
        "import", "export", "stat", "ls", "rm", "warmup", "serve", "mount",
    ] {
        assert!(zsh.contains(&format!("'{sub}:")), "zsh lacks {sub}");
        assert!(fish.contains(&format!("-a \"{sub}\"")), "fish lacks {sub}");
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_choices() {
    let out = Command::new(bin())
        .args(["completions", "tcsh"])
        .output()
        .expect("run dfcache completions");
    let err = failure(&out);
    assert!(err.contains("bash") && err.contains("fish"), "{err}");
}
