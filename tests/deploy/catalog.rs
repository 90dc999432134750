//! What the binaries really accept, read at test time: the workspace's `[[bin]]` targets, each
//! binary's `--help` (and each subcommand's), and the `TOPK_*` variables the code reads
//! directly with `std::env::var` (e.g. `TOPK_LOG_FORMAT` in `topk_core::telemetry`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One command's options, parsed from its `--help`.
#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    /// Long flag name (without `--`) -> whether it takes a value.
    pub flags: BTreeMap<String, bool>,
    /// Short flag letters (`-h` -> 'h') -> whether it takes a value.
    pub short_flags: BTreeMap<char, bool>,
    /// `TOPK_X` -> the long flag it sets.
    pub env_to_flag: BTreeMap<String, String>,
    /// Long flag -> its `[default: ...]`.
    pub defaults: BTreeMap<String, String>,
    pub subcommands: BTreeMap<String, CommandSpec>,
}

impl CommandSpec {
    /// Parses clap's help output (short or long form).
    pub fn from_help(help: &str) -> Self {
        let mut spec = Self::default();
        let mut current_flag: Option<String> = None;
        let mut block = String::new();
        let mut in_commands = false;
        for line in help.lines() {
            let indent = line.len() - line.trim_start().len();
            let trimmed = line.trim();
            if line.starts_with("Commands:") {
                in_commands = true;
                continue;
            }
            if in_commands {
                if trimmed.is_empty() || indent == 0 {
                    in_commands = false;
                } else if indent == 2 {
                    let name = trimmed.split_whitespace().next().unwrap_or_default();
                    if name != "help" {
                        spec.subcommands.insert(name.to_owned(), Self::default());
                    }
                    continue;
                } else {
                    continue;
                }
            }
            if indent > 0 && indent < 8 && trimmed.starts_with('-') {
                spec.finish_block(current_flag.take(), &block);
                block.clear();
                if let Some((long, short, takes_value, rest)) = parse_option_line(trimmed) {
                    spec.flags.insert(long.clone(), takes_value);
                    if let Some(letter) = short {
                        spec.short_flags.insert(letter, takes_value);
                    }
                    block.push_str(&rest);
                    current_flag = Some(long);
                }
                continue;
            }
            if indent == 0 {
                // A section heading ("Options:", "Exit codes:", ...) ends the option's block.
                spec.finish_block(current_flag.take(), &block);
                block.clear();
                continue;
            }
            block.push(' ');
            block.push_str(trimmed);
        }
        spec.finish_block(current_flag, &block);
        spec
    }

    fn finish_block(&mut self, flag: Option<String>, block: &str) {
        let Some(flag) = flag else { return };
        if let Some(env) = bracketed(block, "[env:") {
            let name: String = env
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() {
                self.env_to_flag.insert(name, flag.clone());
            }
        }
        if let Some(default) = bracketed(block, "[default:") {
            let value = default.trim().trim_matches('"').to_owned();
            self.defaults.insert(flag, value);
        }
    }

    /// The flag a `TOPK_*` variable sets, in this command or any subcommand.
    pub fn flag_for_env(&self, name: &str) -> Option<&str> {
        self.env_to_flag.get(name).map(String::as_str).or_else(|| {
            self.subcommands
                .values()
                .find_map(|sub| sub.flag_for_env(name))
        })
    }

    /// A flag's default, in this command or any subcommand.
    pub fn default_of(&self, flag: &str) -> Option<&str> {
        self.defaults.get(flag).map(String::as_str).or_else(|| {
            self.subcommands
                .values()
                .find_map(|sub| sub.default_of(flag))
        })
    }

    /// Every long flag of the command and its subcommands (config-file keys are these with
    /// underscores).
    pub fn all_flags(&self) -> BTreeSet<String> {
        let mut flags: BTreeSet<String> = self.flags.keys().cloned().collect();
        for sub in self.subcommands.values() {
            flags.extend(sub.all_flags());
        }
        flags
    }
}

/// `-h, --help`, `--listen <LISTEN>`, `--dry-run  Print what…` -> (long, short, takes value,
/// the rest of the line: its description when it fits on the same line).
fn parse_option_line(line: &str) -> Option<(String, Option<char>, bool, String)> {
    let mut rest = line;
    let mut short = None;
    if let Some(after_dash) = rest.strip_prefix('-').filter(|text| !text.starts_with('-')) {
        short = after_dash.chars().next();
        rest = after_dash.get(1..)?.trim_start_matches(',').trim_start();
    }
    let after = rest.strip_prefix("--")?;
    let name_end = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(after.len());
    let long = after[..name_end].to_owned();
    let tail = after[name_end..].trim_start();
    let takes_value = tail.starts_with('<') || tail.starts_with("[<") || tail.starts_with('=');
    let description = if takes_value {
        tail.split_once('>')
            .map_or("", |(_, description)| description)
    } else {
        tail
    };
    (!long.is_empty()).then(|| (long, short, takes_value, description.to_owned()))
}

/// The text after `opening` up to the next `]`, newlines already folded into spaces.
fn bracketed<'a>(block: &'a str, opening: &str) -> Option<&'a str> {
    let start = block.find(opening)? + opening.len();
    let end = block[start..]
        .find(']')
        .map_or(block.len(), |end| start + end);
    Some(&block[start..end])
}

/// A workspace binary: its name, the crate directory that builds it, its options.
#[derive(Debug, Clone)]
pub struct Binary {
    pub crate_dir: PathBuf,
    pub spec: CommandSpec,
}

/// Every workspace binary with its options, plus the env vars every binary reads directly.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub binaries: BTreeMap<String, Binary>,
    /// `TOPK_*` names read with `std::env::var` by library code any binary may run.
    pub direct_env: BTreeSet<String>,
}

impl Catalog {
    /// Runs every workspace binary (built by `cargo build --workspace --bins`) for its help.
    pub fn from_workspace(root: &Path) -> Self {
        let mut catalog = Self::default();
        for (name, crate_dir) in workspace_binaries(root) {
            let path = topk_tests::process::binary_path(&name);
            let mut spec = CommandSpec::from_help(&run_help(&path, &[]));
            for subcommand in spec.subcommands.keys().cloned().collect::<Vec<_>>() {
                let sub_spec = CommandSpec::from_help(&run_help(&path, &[&subcommand]));
                spec.subcommands.insert(subcommand, sub_spec);
            }
            catalog.binaries.insert(name, Binary { crate_dir, spec });
        }
        catalog.direct_env = direct_env_reads(root);
        catalog
    }

    pub fn is_binary(&self, name: &str) -> bool {
        self.binaries.contains_key(name)
    }

    pub fn spec(&self, binary: &str) -> Option<&CommandSpec> {
        self.binaries.get(binary).map(|binary| &binary.spec)
    }

    /// Whether `binary` reads the `TOPK_*` variable `name`.
    pub fn knows_env(&self, binary: &str, name: &str) -> bool {
        self.direct_env.contains(name)
            || self
                .spec(binary)
                .is_some_and(|spec| spec.flag_for_env(name).is_some())
    }

    /// Whether any binary reads `name`.
    pub fn any_knows_env(&self, name: &str) -> bool {
        self.binaries
            .keys()
            .any(|binary| self.knows_env(binary, name))
    }

    /// The workspace binary a path or image names (`/usr/local/bin/topk-api`,
    /// `registry/topk/topk-api:1.2`, `topk-api`), if any.
    pub fn binary_named_by(&self, reference: &str) -> Option<String> {
        let base = reference.rsplit('/').next().unwrap_or(reference);
        let base = base.split(['@', ':']).next().unwrap_or(base);
        self.is_binary(base).then(|| base.to_owned())
    }

    /// The HTTP paths a binary's crate routes (`.route("/healthz", …)` in its sources).
    pub fn routes(&self, binary: &str) -> BTreeSet<String> {
        let Some(binary) = self.binaries.get(binary) else {
            return BTreeSet::new();
        };
        let mut routes = BTreeSet::new();
        for source in rust_sources(&binary.crate_dir.join("src")) {
            let text = std::fs::read_to_string(&source).unwrap_or_default();
            for piece in text.split(".route(\"").skip(1) {
                if let Some((path, _)) = piece.split_once('"') {
                    routes.insert(path.to_owned());
                }
            }
        }
        routes
    }
}

fn run_help(path: &Path, subcommand: &[&str]) -> String {
    let output = Command::new(path)
        .args(subcommand)
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .unwrap_or_else(|error| panic!("running {} --help: {error}", path.display()));
    assert!(
        output.status.success(),
        "{} {subcommand:?} --help failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// (binary name, crate dir) of every `[[bin]]` (or `src/main.rs`) of the workspace members.
pub fn workspace_binaries(root: &Path) -> Vec<(String, PathBuf)> {
    let manifest: toml::Table = read_toml(&root.join("Cargo.toml"));
    let members = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members");
    let mut binaries = Vec::new();
    for member in members {
        let crate_dir = root.join(member.as_str().expect("member path"));
        let crate_manifest = read_toml(&crate_dir.join("Cargo.toml"));
        let declared = crate_manifest
            .get("bin")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        for bin in &declared {
            let name = bin["name"].as_str().expect("[[bin]] name");
            binaries.push((name.to_owned(), crate_dir.clone()));
        }
        if declared.is_empty() && crate_dir.join("src/main.rs").exists() {
            let name = crate_manifest["package"]["name"].as_str().expect("name");
            binaries.push((name.to_owned(), crate_dir.clone()));
        }
    }
    binaries
}

/// `TOPK_*` names passed to `env::var(...)` in the non-test crates' sources.
fn direct_env_reads(root: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, crate_dir) in workspace_members(root) {
        if name == "topk-tests" {
            continue;
        }
        for source in rust_sources(&crate_dir.join("src")) {
            let text = std::fs::read_to_string(&source).unwrap_or_default();
            for piece in text.split("env::var(\"").skip(1) {
                if let Some((variable, _)) = piece.split_once('"') {
                    if variable.starts_with("TOPK_") {
                        names.insert(variable.to_owned());
                    }
                }
            }
        }
    }
    names
}

fn workspace_members(root: &Path) -> Vec<(String, PathBuf)> {
    let manifest: toml::Table = read_toml(&root.join("Cargo.toml"));
    manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .map(|member| {
            let crate_dir = root.join(member.as_str().expect("member path"));
            let crate_manifest = read_toml(&crate_dir.join("Cargo.toml"));
            let name = crate_manifest["package"]["name"]
                .as_str()
                .expect("name")
                .to_owned();
            (name, crate_dir)
        })
        .collect()
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    text.parse()
        .unwrap_or_else(|error| panic!("parsing {}: {error}", path.display()))
}

fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_HELP: &str = "\
Consumes things.

Usage: demo [OPTIONS] [COMMAND]

Commands:
  run    Do it
         (the default)
  help   Print this message

Options:
      --listen <LISTEN>
          Address
          
          [env: TOPK_DEMO_LISTEN=]
          [default: 127.0.0.1:9464]

      --secret <SECRET>
          A secret [env:
          TOPK_DEMO_SECRET] [default: \"\"]
      --dry-run
          Change nothing, not even --listen
  -h, --help
          Print help

Exit codes:
  0  fine
";

    #[test]
    fn help_text_yields_flags_env_defaults_and_subcommands() {
        let spec = CommandSpec::from_help(LONG_HELP);
        assert_eq!(
            spec.flags.keys().collect::<Vec<_>>(),
            ["dry-run", "help", "listen", "secret"]
        );
        assert!(spec.flags["listen"]);
        assert!(!spec.flags["dry-run"]);
        assert_eq!(spec.short_flags.get(&'h'), Some(&false));
        assert_eq!(spec.flag_for_env("TOPK_DEMO_LISTEN"), Some("listen"));
        assert_eq!(spec.flag_for_env("TOPK_DEMO_SECRET"), Some("secret"));
        assert_eq!(spec.default_of("listen"), Some("127.0.0.1:9464"));
        assert_eq!(spec.default_of("secret"), Some(""));
        assert_eq!(spec.subcommands.keys().collect::<Vec<_>>(), ["run"]);
    }

    #[test]
    fn same_line_descriptions_are_not_flags() {
        let spec = CommandSpec::from_help("Options:\n      --prune  Prune too, like --other\n");
        assert_eq!(spec.flags.keys().collect::<Vec<_>>(), ["prune"]);
        assert!(!spec.flags["prune"]);
    }
}
