//! Compose files (deploy/compose): services running our images against the binaries and the
//! Dockerfile stages they build, dependencies between services, consumers vs partitions,
//! mounted files, one ClickHouse node and cluster for every binary. An override file
//! (`compose.<name>.yaml`, e.g. compose.cluster.yaml) is checked merged over `compose.yaml`, as
//! `docker compose -f compose.yaml -f compose.<name>.yaml` runs it.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::catalog::Catalog;
use crate::container::{check_one_clickhouse, Container};
use crate::dockerfile::Dockerfile;
use crate::findings::Findings;
use crate::invocation::{check_argv, check_invocation, check_topk_env_anywhere, shell_commands};
use crate::kubernetes::{scalar, sequence, str_at, value_at};

/// Every compose file of `dir`: the base file (`compose.yaml`) alone, each other file named
/// `compose.<name>.yaml` merged over it, any other YAML file alone.
pub fn check_dir(catalog: &Catalog, dir: &Path, findings: &mut Findings) {
    let files = crate::files_with_extensions(dir, &["yaml", "yml"]);
    let name_of = |path: &Path| path.file_name().unwrap().to_string_lossy().into_owned();
    let base = files
        .iter()
        .find(|path| matches!(name_of(path).as_str(), "compose.yaml" | "compose.yml"));
    for path in &files {
        match base {
            Some(base) if base != path && name_of(path).starts_with("compose.") => {
                check(catalog, &[base, path], findings)
            }
            _ => check(catalog, &[path], findings),
        }
    }
}

/// One compose project: `paths` merged in order, as compose does with repeated `-f`.
pub fn check(catalog: &Catalog, paths: &[&PathBuf], findings: &mut Findings) {
    let file = paths
        .iter()
        .map(|path| crate::display(path))
        .collect::<Vec<_>>()
        .join(" + ");
    let mut compose = Value::Null;
    for path in paths {
        findings.at(crate::display(path));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut value: Value = match serde_yaml::from_str(&text) {
            Ok(value) => value,
            Err(error) => return findings.push(format!("does not parse: {error}")),
        };
        if let Err(error) = value.apply_merge() {
            return findings.push(format!("bad merge key: {error}"));
        }
        merge(&mut compose, value, "");
    }
    findings.at(&file);
    let Some(services) = compose.get("services").and_then(Value::as_mapping) else {
        return findings.push("no services");
    };
    // Relative paths in every file are relative to the first file's folder (the project's).
    let directory = paths[0].parent().unwrap_or(Path::new("."));
    let scripts: Vec<Vec<String>> = services
        .values()
        .flat_map(|service| service_argv(service, None))
        .flat_map(|argv| argv.into_iter().flat_map(|word| shell_commands(&word)))
        .collect();
    let mut deployment = Vec::new();
    let mut clickhouse_configs = Vec::new();
    for (name, service) in services {
        let name = scalar(name).unwrap_or_default();
        findings.at(format!("{file}: service {name}"));
        for dependency in dependencies(service) {
            if !services.contains_key(dependency.as_str()) {
                findings.push(format!("depends on `{dependency}`, which is no service"));
            }
        }
        for (source, target) in bind_mounts(service) {
            let host_path = directory.join(&source);
            if source.starts_with('.') && !host_path.exists() {
                findings.push(format!("mounts `{source}`, which does not exist"));
            }
            if target.starts_with("/etc/clickhouse-server/") && host_path.is_file() {
                clickhouse_configs.push(std::fs::read_to_string(&host_path).unwrap_or_default());
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
        deployment.push((format!("service {name}"), runtime));
    }
    findings.at(&file);
    check_one_clickhouse(catalog, &deployment, findings);
    check_cluster_defined(catalog, &deployment, &clickhouse_configs, findings);
}

/// A `TOPK_CLICKHOUSE_CLUSTER` must name a cluster in the `remote_servers` of a ClickHouse
/// config file mounted into some service (`ON CLUSTER topk` fails on a server that lacks it).
fn check_cluster_defined(
    catalog: &Catalog,
    deployment: &[(String, Container)],
    configs: &[String],
    findings: &mut Findings,
) {
    let clusters: std::collections::BTreeSet<String> = deployment
        .iter()
        .filter_map(|(_, container)| container.effective(catalog, "clickhouse-cluster"))
        .flatten()
        .filter(|cluster| !cluster.is_empty())
        .collect();
    for cluster in clusters {
        let defined = configs.iter().any(|config| {
            config
                .split("<remote_servers>")
                .skip(1)
                .filter_map(|section| section.split("</remote_servers>").next())
                .any(|section| section.contains(&format!("<{cluster}>")))
        });
        if !defined {
            findings.push(format!(
                "TOPK_CLICKHOUSE_CLUSTER is `{cluster}`, a cluster in the remote_servers of no \
                 ClickHouse config file mounted into /etc/clickhouse-server/"
            ));
        }
    }
}

/// Compose's merge of a later `-f` file into the earlier ones (the compose-spec rules deploy
/// files rely on): mappings merge key by key (`environment` and `depends_on` lists become
/// mappings first), `command`, `entrypoint` and a healthcheck's `test` are replaced, other
/// lists (`ports`, `volumes`, `expose`) are appended to, scalars replaced.
fn merge(base: &mut Value, over: Value, key: &str) {
    let over = listed_as_mapping(key, over);
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (name, value) in over {
                let child = scalar(&name).unwrap_or_default();
                match base.get_mut(&name) {
                    Some(existing) => {
                        let earlier = std::mem::replace(existing, Value::Null);
                        *existing = listed_as_mapping(&child, earlier);
                        merge(existing, value, &child);
                    }
                    None => {
                        base.insert(name, listed_as_mapping(&child, value));
                    }
                }
            }
        }
        (Value::Sequence(base), Value::Sequence(over))
            if !matches!(key, "command" | "entrypoint" | "test") =>
        {
            for item in over {
                if !base.contains(&item) {
                    base.push(item);
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// `environment: [A=1]` as `{A: "1"}`, `depends_on: [x]` as `{x: {condition: service_started}}`.
fn listed_as_mapping(key: &str, value: Value) -> Value {
    let Value::Sequence(items) = &value else {
        return value;
    };
    let mut mapping = serde_yaml::Mapping::new();
    match key {
        "environment" => {
            for item in items.iter().filter_map(scalar) {
                match item.split_once('=') {
                    Some((name, value)) => mapping.insert(name.into(), value.into()),
                    None => mapping.insert(item.into(), Value::Null),
                };
            }
        }
        "depends_on" => {
            for item in items.iter().filter_map(scalar) {
                let mut condition = serde_yaml::Mapping::new();
                condition.insert("condition".into(), "service_started".into());
                mapping.insert(item.into(), Value::Mapping(condition));
            }
        }
        _ => return value,
    }
    Value::Mapping(mapping)
}

/// (source, target) of a service's bind mounts: `./file:/target[:ro]` and the long syntax
/// (`type: bind`). Named volumes are not bind mounts.
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    sequence(service.get("volumes"))
        .iter()
        .filter_map(|entry| match scalar(entry) {
            Some(short) => {
                let mut parts = short.splitn(3, ':');
                let source = parts.next()?.to_owned();
                let target = parts.next()?.to_owned();
                source
                    .starts_with(['.', '/', '~'])
                    .then_some((source, target))
            }
            None => (str_at(entry, &["type"]).as_deref() == Some("bind")).then(|| {
                (
                    str_at(entry, &["source"]).unwrap_or_default(),
                    str_at(entry, &["target"]).unwrap_or_default(),
                )
            }),
        })
        .collect()
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
