//! Command lines in deploy files: argument lists (`args:`, `command:`, `ExecStart=`, `CMD`)
//! and shell scripts (`sh -c "while :; do topk-rollup run --prune; …"`), checked against the
//! binaries' real flags and subcommands.

use crate::catalog::Catalog;
use crate::findings::Findings;

/// Splits shell text into commands (at `;`, `&&`, `||`, `|`, `&` and newlines), each a list
/// of words with quotes removed. Enough shell for deploy files: no expansions, no here-docs.
pub fn shell_commands(script: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = script.chars();
    fn end_word(word: &mut String, in_word: &mut bool, words: &mut Vec<String>) {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    }
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for quoted in chars.by_ref() {
                    if quoted == '\'' {
                        break;
                    }
                    word.push(quoted);
                }
            }
            '"' => {
                in_word = true;
                while let Some(quoted) = chars.next() {
                    match quoted {
                        '"' => break,
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                word.push(escaped);
                            }
                        }
                        other => word.push(other),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') | None => {}
                Some(escaped) => {
                    in_word = true;
                    word.push(escaped);
                }
            },
            '#' if !in_word => {
                // A comment runs to the end of the line.
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        break;
                    }
                }
                end_word(&mut word, &mut in_word, &mut words);
                commands.push(std::mem::take(&mut words));
            }
            ';' | '\n' | '|' | '&' => {
                end_word(&mut word, &mut in_word, &mut words);
                commands.push(std::mem::take(&mut words));
            }
            c if c.is_whitespace() => end_word(&mut word, &mut in_word, &mut words),
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut words);
    commands.push(words);
    commands.retain(|command| !command.is_empty());
    commands
}

/// Shell words that may precede the command itself.
const SHELL_PREFIXES: &[&str] = &[
    "do", "then", "else", "exec", "time", "env", "!", "{", "(", "nohup",
];

/// Checks every command of a shell script: a command whose program is a workspace binary is
/// checked as an invocation; a program named like one (`topk-…`) that is none is reported.
pub fn check_shell(catalog: &Catalog, script: &str, findings: &mut Findings) {
    for command in shell_commands(script) {
        let start = command
            .iter()
            .position(|word| !SHELL_PREFIXES.contains(&word.as_str()) && !is_assignment(word))
            .unwrap_or(command.len());
        for assignment in command[..start].iter().filter(|word| is_assignment(word)) {
            if let Some((name, _)) = assignment.split_once('=') {
                check_topk_env_anywhere(catalog, name, findings);
            }
        }
        let Some(program) = command.get(start) else {
            continue;
        };
        check_program_and_args(catalog, program, &command[start + 1..], findings);
    }
}

/// An argument vector whose first element is the program (ENTRYPOINT + CMD, `command:` +
/// `args:`, ExecStart). Shells (`sh -c SCRIPT`) are followed into their script.
pub fn check_argv(catalog: &Catalog, argv: &[String], findings: &mut Findings) {
    let Some(program) = argv.first() else {
        return;
    };
    let base = program.rsplit('/').next().unwrap_or(program);
    if matches!(base, "sh" | "bash" | "dash") {
        if let Some(index) = argv.iter().position(|arg| arg == "-c") {
            if let Some(script) = argv.get(index + 1) {
                check_shell(catalog, script, findings);
            }
        }
        return;
    }
    check_program_and_args(catalog, program, &argv[1..], findings);
}

fn check_program_and_args(
    catalog: &Catalog,
    program: &str,
    args: &[String],
    findings: &mut Findings,
) {
    match catalog.binary_named_by(program) {
        Some(binary) => check_invocation(catalog, &binary, args, findings),
        None => {
            let base = program.rsplit('/').next().unwrap_or(program);
            if base.starts_with("topk-") {
                findings.push(format!(
                    "`{program}` is not a binary of the workspace (known: {:?})",
                    catalog.binaries.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
}

/// Checks `args` (after the program name) against `binary`'s flags and subcommands: flags
/// before a subcommand against the top-level options, flags after it against the
/// subcommand's (clap rejects a top-level-only option after the subcommand).
pub fn check_invocation(catalog: &Catalog, binary: &str, args: &[String], findings: &mut Findings) {
    let Some(top) = catalog.spec(binary) else {
        findings.push(format!("`{binary}` is not a binary of the workspace"));
        return;
    };
    let mut current = top;
    let mut path = binary.to_owned();
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline_value) = match long.split_once('=') {
                Some((name, _)) => (name, true),
                None => (long, false),
            };
            match current.flags.get(name) {
                Some(&takes_value) => {
                    if takes_value && !inline_value {
                        index += 1;
                    }
                }
                None => {
                    findings.push(format!("`{path}` has no flag `--{name}`"));
                    // Its value, probably: don't report it again as a stray argument.
                    let next = args.get(index).map(String::as_str).unwrap_or("-");
                    if !inline_value && !next.starts_with('-') {
                        index += 1;
                    }
                }
            }
        } else if let Some(short) = arg.strip_prefix('-').filter(|short| !short.is_empty()) {
            let letter = short.chars().next().unwrap_or_default();
            match current.short_flags.get(&letter) {
                Some(&takes_value) => {
                    if takes_value && short.len() == 1 {
                        index += 1;
                    }
                }
                None => findings.push(format!("`{path}` has no flag `-{letter}`")),
            }
        } else if let Some(sub) = current.subcommands.get(arg.as_str()) {
            current = sub;
            path = format!("{path} {arg}");
        } else if current.subcommands.is_empty() {
            findings.push(format!("`{path}` takes no positional argument `{arg}`"));
        } else {
            findings.push(format!(
                "`{path}` has no subcommand `{arg}` (known: {:?})",
                current.subcommands.keys().collect::<Vec<_>>()
            ));
        }
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// A `TOPK_*` variable set where no particular binary is known must exist in some binary.
pub fn check_topk_env_anywhere(catalog: &Catalog, name: &str, findings: &mut Findings) {
    if name.starts_with("TOPK_") && !catalog.any_knows_env(name) {
        findings.push(format!("no binary reads `{name}`"));
    }
}

/// A `TOPK_*` variable set for `binary` must be one it reads.
pub fn check_env_for(catalog: &Catalog, binary: &str, name: &str, findings: &mut Findings) {
    if name.starts_with("TOPK_") && !catalog.knows_env(binary, name) {
        findings.push(format!("`{binary}` does not read `{name}`"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_text_splits_into_commands() {
        let commands =
            shell_commands("set -e\nwhile :; do topk-rollup run --prune; sleep 3600; done # x");
        assert_eq!(
            commands,
            [
                vec!["set", "-e"],
                vec!["while", ":"],
                vec!["do", "topk-rollup", "run", "--prune"],
                vec!["sleep", "3600"],
                vec!["done"],
            ]
        );
        assert_eq!(
            shell_commands("a 'b c' \"d \\\"e\\\"\" f\\\n g && h"),
            [vec!["a", "b c", "d \"e\"", "f", "g"], vec!["h"]]
        );
    }
}
