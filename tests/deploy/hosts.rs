//! Bare-metal deploy files (deploy/systemd): units, the env files and TOML config files they
//! load, timers; and the crates' `*.example.toml` config files.

use std::collections::BTreeMap;
use std::path::Path;

use crate::catalog::Catalog;
use crate::container::Container;
use crate::findings::Findings;
use crate::invocation::{check_argv, check_env_for, shell_commands};

/// `KEY=VALUE` lines (comments, blanks and an optional `export ` skipped; quotes removed).
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (key, value) = line.split_once('=')?;
            let value = value.trim().trim_matches('"').trim_matches('\'');
            Some((key.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

/// (section, key, value) of a unit file, continuation lines joined.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.starts_with('#') || trimmed.starts_with(';')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let logical = std::mem::take(&mut pending);
        if logical.starts_with('[') && logical.ends_with(']') {
            section = logical[1..logical.len() - 1].to_owned();
        } else if let Some((key, value)) = logical.split_once('=') {
            entries.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
    }
    entries
}

/// systemd time spans: "60", "45s", "2min", "1h 30min", "infinity".
fn timespan_ms(text: &str) -> u64 {
    if text.trim() == "infinity" {
        return u64::MAX;
    }
    let mut total = 0;
    for part in text.split_whitespace() {
        let split = part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len());
        let value: u64 = part[..split].parse().unwrap_or(0);
        total += match &part[split..] {
            "" | "s" | "sec" => value * 1000,
            "ms" | "msec" => value,
            "m" | "min" => value * 60_000,
            "h" | "hr" => value * 3_600_000,
            _ => 0,
        };
    }
    total
}

/// Checks every unit in `dir` and that every env/TOML file there is loaded by one of them.
pub fn check_systemd(catalog: &Catalog, dir: &Path, findings: &mut Findings) {
    let mut referenced = Vec::new();
    for path in crate::files_with_extensions(dir, &["service", "timer"]) {
        let file = crate::display(&path);
        findings.at(&file);
        let entries = parse_unit(&std::fs::read_to_string(&path).unwrap_or_default());
        if path
            .extension()
            .is_some_and(|extension| extension == "timer")
        {
            let unit = entries
                .iter()
                .find(|(section, key, _)| section == "Timer" && key == "Unit")
                .map_or_else(
                    || path.with_extension("service"),
                    |(_, _, unit)| dir.join(unit),
                );
            if !unit.exists() {
                findings.push(format!(
                    "timer starts {}, which is not here",
                    unit.display()
                ));
            }
            continue;
        }
        check_service(catalog, dir, &entries, &mut referenced, findings);
    }
    for path in crate::files_with_extensions(dir, &["example", "env", "toml"]) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !referenced.contains(&name) {
            findings.at(crate::display(&path));
            findings.push("no unit loads this file, so no binary's options can be checked");
        }
    }
}

fn check_service(
    catalog: &Catalog,
    dir: &Path,
    entries: &[(String, String, String)],
    referenced: &mut Vec<String>,
    findings: &mut Findings,
) {
    let values = |wanted: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|(section, key, _)| section == "Service" && key == wanted)
            .map(|(_, _, value)| value.clone())
            .collect()
    };
    let exec_start = values("ExecStart");
    let Some(main) = exec_start.first() else {
        return findings.push("no ExecStart");
    };
    let argv: Vec<String> = shell_commands(main.trim_start_matches(['-', '@', ':', '+', '!']))
        .into_iter()
        .flatten()
        .collect();
    let Some(binary) = argv
        .first()
        .and_then(|program| catalog.binary_named_by(program))
    else {
        return findings.push(format!("ExecStart `{main}` runs no workspace binary"));
    };
    for exec in ["ExecStartPre", "ExecStartPost", "ExecStop", "ExecReload"] {
        for command in values(exec) {
            let words: Vec<String> =
                shell_commands(command.trim_start_matches(['-', '@', ':', '+', '!']))
                    .into_iter()
                    .flatten()
                    .collect();
            check_argv(catalog, &words, findings);
        }
    }
    check_argv(catalog, &argv, findings);

    // The effective settings, lowest precedence first: TOML file, env files, Environment=,
    // flags. Kept as env var names so the shared container checks can read them.
    let mut unit = Container {
        binary: binary.clone(),
        ..Container::default()
    };
    let config_file = argv
        .iter()
        .position(|word| word == "--config")
        .and_then(|index| argv.get(index + 1).cloned())
        .or_else(|| {
            argv.iter()
                .find_map(|word| word.strip_prefix("--config=").map(str::to_owned))
        });
    let spec = catalog.spec(&binary).cloned().unwrap_or_default();
    let env_name_of = |flag: &str| {
        spec.env_to_flag
            .iter()
            .find(|(_, env_flag)| env_flag.as_str() == flag)
            .map(|(name, _)| name.clone())
    };
    if let Some(config_file) = config_file {
        let local = local_copy(dir, &config_file, referenced);
        match local.map(|path| std::fs::read_to_string(path).map_err(|error| error.to_string())) {
            Some(Ok(text)) => {
                for (key, value) in check_toml_keys(catalog, &binary, &text, findings) {
                    if let Some(name) = env_name_of(&key.replace('_', "-")) {
                        unit.env.insert(name, Some(value));
                    }
                }
            }
            Some(Err(error)) => findings.push(format!("{config_file}: {error}")),
            None => findings.push(format!(
                "--config {config_file}: no copy of it in {}",
                dir.display()
            )),
        }
    }
    for env_file in values("EnvironmentFile") {
        let optional = env_file.starts_with('-');
        let env_file = env_file.trim_start_matches('-').to_owned();
        match local_copy(dir, &env_file, referenced) {
            Some(path) => {
                for (name, value) in
                    parse_env_file(&std::fs::read_to_string(path).unwrap_or_default())
                {
                    check_env_for(catalog, &binary, &name, findings);
                    unit.env.insert(name, Some(value));
                }
            }
            None if optional => {}
            None => findings.push(format!(
                "EnvironmentFile {env_file}: no example of it in {}",
                dir.display()
            )),
        }
    }
    for assignments in values("Environment") {
        for word in shell_commands(&assignments).into_iter().flatten() {
            if let Some((name, value)) = word.split_once('=') {
                unit.env.insert(name.to_owned(), Some(value.to_owned()));
            }
        }
    }
    let mut index = 1;
    while index < argv.len() {
        if let Some(flag) = argv[index].strip_prefix("--") {
            let (flag, inline) = flag
                .split_once('=')
                .map_or((flag, None), |(f, v)| (f, Some(v.to_owned())));
            let value = inline.or_else(|| argv.get(index + 1).cloned());
            if let (Some(name), Some(value)) = (env_name_of(flag), value) {
                unit.env.insert(name, Some(value));
            }
        }
        index += 1;
    }
    unit.stop_grace_ms = values("TimeoutStopSec")
        .last()
        .map_or(90_000, |span| timespan_ms(span));
    unit.check(catalog, findings);
}

/// The copy of a host file (`/etc/topk/api.env`) kept next to the units: the same file name,
/// or with `.example` appended. Records it as referenced.
fn local_copy(
    dir: &Path,
    host_path: &str,
    referenced: &mut Vec<String>,
) -> Option<std::path::PathBuf> {
    let name = host_path.rsplit('/').next().unwrap_or(host_path);
    [name.to_owned(), format!("{name}.example")]
        .into_iter()
        .find(|candidate| dir.join(candidate).exists())
        .map(|candidate| {
            referenced.push(candidate.clone());
            dir.join(candidate)
        })
}

/// A config file's keys must be options of `binary` (flat keys: long flag names with
/// underscores). Returns the (key, value as text) pairs.
pub fn check_toml_keys(
    catalog: &Catalog,
    binary: &str,
    text: &str,
    findings: &mut Findings,
) -> Vec<(String, String)> {
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(error) => {
            findings.push(format!("does not parse as TOML: {error}"));
            return Vec::new();
        }
    };
    let flags = catalog
        .spec(binary)
        .map(|spec| spec.all_flags())
        .unwrap_or_default();
    let mut pairs = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        if !flags.contains(&flag) || matches!(flag.as_str(), "help" | "version" | "config") {
            findings.push(format!("`{key}` is not an option of {binary}"));
        }
        let text = match value {
            toml::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        pairs.push((key.clone(), text));
    }
    pairs
}

/// `<crate>/<binary>.example.toml` files shipped with the crates.
pub fn check_example_configs(catalog: &Catalog, findings: &mut Findings) {
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for (binary, details) in &catalog.binaries {
        let path = details.crate_dir.join(format!("{binary}.example.toml"));
        if !path.exists() || seen.insert(crate::display(&path), ()).is_some() {
            continue;
        }
        findings.at(crate::display(&path));
        check_toml_keys(
            catalog,
            binary,
            &std::fs::read_to_string(&path).unwrap_or_default(),
            findings,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_files_and_spans_parse() {
        let entries = parse_unit(
            "# c\n[Service]\nExecStart=/usr/local/bin/x \\\n  --a 1\nTimeoutStopSec=1min 30s\n",
        );
        assert_eq!(entries[0].2, "/usr/local/bin/x  --a 1");
        assert_eq!(timespan_ms(&entries[1].2), 90_000);
        assert_eq!(timespan_ms("60"), 60_000);
        assert_eq!(
            parse_env_file("# x\nA=1\nexport B=\"two\"\n\n"),
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "two".to_owned())
            ]
        );
    }
}
