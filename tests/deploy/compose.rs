//! Compose files (deploy/compose): services running our images against the binaries and the
//! Dockerfile stages they build, dependencies between services, consumers vs partitions.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::catalog::Catalog;
use crate::container::Container;
use crate::dockerfile::Dockerfile;
use crate::findings::Findings;
use crate::invocation::{check_argv, check_invocation, check_topk_env_anywhere, shell_commands};
use crate::kubernetes::{scalar, sequence, str_at, value_at};

pub fn check(catalog: &Catalog, path: &Path, findings: &mut Findings) {
    let file = crate::display(path);
    findings.at(&file);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut compose: Value = match serde_yaml::from_str(&text) {
        Ok(value) => value,
        Err(error) => return findings.push(format!("does not parse: {error}")),
    };
    if let Err(error) = compose.apply_merge() {
        return findings.push(format!("bad merge key: {error}"));
    }
    let Some(services) = compose.get("services").and_then(Value::as_mapping) else {
        return findings.push("no services");
    };
    let directory = path.parent().unwrap_or(Path::new("."));
    let scripts: Vec<Vec<String>> = services
        .values()
        .flat_map(|service| service_argv(service, None))
        .flat_map(|argv| argv.into_iter().flat_map(|word| shell_commands(&word)))
        .collect();
    for (name, service) in services {
        let name = scalar(name).unwrap_or_default();
        findings.at(format!("{file}: service {name}"));
        for dependency in dependencies(service) {
            if !services.contains_key(dependency.as_str()) {
                findings.push(format!("depends on `{dependency}`, which is no service"));
            }
        }
        let dockerfile = service_dockerfile(directory, service, findings);
        let binary = match (str_at(service, &["build", "target"]), &dockerfile) {
            (Some(target), Some(dockerfile)) => match dockerfile.stage(&target) {
                Some(stage) => dockerfile.entrypoint_binary(catalog, stage),
                None => {
                    findings.push(format!("build target `{target}` is no Dockerfile stage"));
                    None
                }
            },
            _ => catalog.binary_named_by(&str_at(service, &["image"]).unwrap_or_default()),
        };
        let environment = environment(service);
        let Some(binary) = binary else {
            let image = str_at(service, &["image"]).unwrap_or_default();
            if image.contains("topk") {
                findings.push(format!("image `{image}` names no workspace binary"));
            }
            for (variable, _) in &environment {
                check_topk_env_anywhere(catalog, variable, findings);
            }
            if let Some(argv) = service_argv(service, None) {
                check_argv(catalog, &argv, findings);
            }
            continue;
        };
        let mut runtime = Container::new(catalog, &binary, dockerfile.as_ref());
        for env_file in env_files(service) {
            let env_path = directory.join(&env_file);
            match std::fs::read_to_string(&env_path) {
                Ok(text) => runtime.env.extend(
                    crate::hosts::parse_env_file(&text)
                        .into_iter()
                        .map(|(key, value)| (key, Some(value))),
                ),
                Err(error) => findings.push(format!("env_file {env_file}: {error}")),
            }
        }
        runtime.env.extend(environment);
        runtime.stop_grace_ms = service
            .get("stop_grace_period")
            .and_then(scalar)
            .map_or(10_000, |period| duration_ms(&period));
        runtime.ports = Some(container_ports(service));
        runtime.check(catalog, findings);
        match service_argv(service, Some(&binary)) {
            Some(argv) if service.get("entrypoint").is_some() => {
                check_argv(catalog, &argv, findings)
            }
            Some(argv) => check_invocation(catalog, &binary, &argv[1..], findings),
            None => {}
        }
        check_partitions(catalog, &binary, service, &runtime, &scripts, findings);
    }
}

/// A Kafka consumer's replicas must not exceed the partitions its topic is created with
/// (`kafka-topics.sh --create --topic T --partitions N` in some service).
fn check_partitions(
    catalog: &Catalog,
    binary: &str,
    service: &Value,
    runtime: &Container,
    scripts: &[Vec<String>],
    findings: &mut Findings,
) {
    let Some(spec) = catalog.spec(binary) else {
        return;
    };
    if !spec.flags.contains_key("kafka-group-id") {
        return;
    }
    let topic = spec
        .env_to_flag
        .iter()
        .find(|(_, flag)| flag.as_str() == "plays-topic")
        .and_then(|(variable, _)| runtime.env.get(variable).cloned().flatten())
        .or_else(|| spec.default_of("plays-topic").map(str::to_owned))
        .unwrap_or_default();
    let replicas = value_at(service, &["deploy", "replicas"])
        .and_then(Value::as_u64)
        .unwrap_or(1);
    for command in scripts {
        let after = |flag: &str| {
            command
                .iter()
                .position(|word| word == flag)
                .and_then(|index| command.get(index + 1))
        };
        if after("--topic") == Some(&topic) {
            if let Some(partitions) = after("--partitions").and_then(|n| n.parse::<u64>().ok()) {
                if replicas > partitions {
                    findings.push(format!(
                        "{replicas} replicas of {binary} but topic `{topic}` has {partitions} \
                         partitions: the extra consumers idle"
                    ));
                }
            }
        }
    }
}

/// entrypoint + command (strings split like compose does); `None` when neither is set and
/// no binary is given. With a binary and no entrypoint: [binary, command...].
fn service_argv(service: &Value, binary: Option<&str>) -> Option<Vec<String>> {
    let words = |value: Option<&Value>| -> Option<Vec<String>> {
        match value? {
            Value::String(text) => Some(shell_commands(text).into_iter().flatten().collect()),
            Value::Sequence(items) => Some(items.iter().filter_map(scalar).collect()),
            _ => None,
        }
    };
    let entrypoint = words(service.get("entrypoint"));
    let command = words(service.get("command")).unwrap_or_default();
    match (entrypoint, binary) {
        (Some(entrypoint), _) => Some([entrypoint, command].concat()),
        (None, Some(binary)) => Some([vec![binary.to_owned()], command].concat()),
        (None, None) => (!command.is_empty()).then_some(command),
    }
}

fn service_dockerfile(
    directory: &Path,
    service: &Value,
    findings: &mut Findings,
) -> Option<Dockerfile> {
    let build = service.get("build")?;
    let context: PathBuf = directory.join(
        str_at(build, &["context"])
            .or_else(|| scalar(build))
            .unwrap_or_else(|| ".".into()),
    );
    let dockerfile =
        context.join(str_at(build, &["dockerfile"]).unwrap_or_else(|| "Dockerfile".into()));
    match std::fs::read_to_string(&dockerfile) {
        Ok(text) => Dockerfile::parse(&text)
            .map_err(|error| findings.push(format!("{}: {error}", dockerfile.display())))
            .ok(),
        Err(error) => {
            findings.push(format!(
                "build dockerfile {}: {error}",
                dockerfile.display()
            ));
            None
        }
    }
}

fn environment(service: &Value) -> Vec<(String, Option<String>)> {
    match service.get("environment") {
        Some(Value::Mapping(variables)) => variables
            .iter()
            .map(|(name, value)| (scalar(name).unwrap_or_default(), scalar(value)))
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(scalar)
            .map(|item| match item.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (item, None),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn env_files(service: &Value) -> Vec<String> {
    match service.get("env_file") {
        Some(Value::String(file)) => vec![file.clone()],
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|item| scalar(item).or_else(|| str_at(item, &["path"])))
            .collect(),
        _ => Vec::new(),
    }
}

fn dependencies(service: &Value) -> Vec<String> {
    match service.get("depends_on") {
        Some(Value::Mapping(entries)) => entries.keys().filter_map(scalar).collect(),
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        _ => Vec::new(),
    }
}

/// Container-side ports of `expose` and `ports` ("8080", "8080:8080", "127.0.0.1:80:8080/tcp").
fn container_ports(service: &Value) -> Vec<u16> {
    let mut ports = Vec::new();
    for list in ["expose", "ports"] {
        for entry in sequence(service.get(list)) {
            let text = scalar(entry)
                .or_else(|| str_at(entry, &["target"]))
                .unwrap_or_default();
            let container_side = text.rsplit(':').next().unwrap_or_default();
            let number = container_side.split('/').next().unwrap_or_default();
            if let Ok(port) = number.parse() {
                ports.push(port);
            }
        }
    }
    ports
}

/// "45s", "1m30s", "500ms", "2m" -> milliseconds (compose duration syntax, the common units).
pub fn duration_ms(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().unwrap_or(0);
        number.clear();
        total += match c {
            'h' => value * 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                value
            }
            'm' => value * 60_000,
            's' => value * 1000,
            _ => 0,
        };
    }
    total + number.parse::<u64>().unwrap_or(0) * 1000
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn compose_durations() {
        assert_eq!(duration_ms("45s"), 45_000);
        assert_eq!(duration_ms("1m30s"), 90_000);
        assert_eq!(duration_ms("500ms"), 500);
        assert_eq!(duration_ms("2h"), 7_200_000);
    }
}
