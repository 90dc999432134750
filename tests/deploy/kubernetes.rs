//! Kubernetes manifests (deploy/k8s): workloads against the binaries, ConfigMap/Secret
//! references against the objects defined, probes and scrape annotations against the routes
//! the binaries serve, kustomization resources against the files.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

use crate::catalog::Catalog;
use crate::container::Container;
use crate::dockerfile::Dockerfile;
use crate::findings::Findings;
use crate::invocation::{check_argv, check_invocation, check_topk_env_anywhere};

/// Every document of every YAML file in `dir`, with its file name.
pub fn load_documents(dir: &Path, findings: &mut Findings) -> Vec<(String, Value)> {
    let mut documents = Vec::new();
    for path in crate::files_with_extensions(dir, &["yaml", "yml"]) {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        findings.at(crate::display(&path));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for document in serde_yaml::Deserializer::from_str(&text) {
            match Value::deserialize(document) {
                Ok(Value::Null) => {}
                Ok(value) => documents.push((file.clone(), value)),
                Err(error) => findings.push(format!("does not parse: {error}")),
            }
        }
    }
    documents
}

/// Keys (and values, for ConfigMaps) of the ConfigMaps and Secrets defined.
#[derive(Debug, Default)]
struct Objects {
    config_maps: BTreeMap<String, BTreeMap<String, Option<String>>>,
    secrets: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

impl Objects {
    fn collect(documents: &[(String, Value)]) -> Self {
        let mut objects = Self::default();
        for (_, document) in documents {
            let name = str_at(document, &["metadata", "name"]).unwrap_or_default();
            let kind = str_at(document, &["kind"]).unwrap_or_default();
            let mut keys = BTreeMap::new();
            for section in ["data", "stringData"] {
                if let Some(Value::Mapping(data)) = document.get(section) {
                    for (key, value) in data {
                        let value = (kind == "ConfigMap").then(|| scalar(value)).flatten();
                        keys.insert(scalar(key).unwrap_or_default(), value);
                    }
                }
            }
            match kind.as_str() {
                "ConfigMap" => objects.config_maps.insert(name, keys),
                "Secret" => objects.secrets.insert(name, keys),
                _ => None,
            };
        }
        objects
    }

    fn get(&self, kind: &str, name: &str) -> Option<&BTreeMap<String, Option<String>>> {
        match kind {
            "configMap" => self.config_maps.get(name),
            _ => self.secrets.get(name),
        }
    }
}

pub fn check(
    catalog: &Catalog,
    dir: &Path,
    dockerfile: Option<&Dockerfile>,
    findings: &mut Findings,
) {
    let documents = load_documents(dir, findings);
    let objects = Objects::collect(&documents);
    let mut images = Vec::new();
    for (file, document) in &documents {
        let kind = str_at(document, &["kind"]).unwrap_or_default();
        let name = str_at(document, &["metadata", "name"]).unwrap_or_default();
        findings.at(format!("deploy/k8s/{file}: {kind} {name}"));
        if kind == "Kustomization" {
            check_kustomization(dir, document, findings);
            continue;
        }
        let template = match kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                document.get("spec").and_then(|spec| spec.get("template"))
            }
            "CronJob" => value_at(document, &["spec", "jobTemplate", "spec", "template"]),
            _ => None,
        };
        let Some(template) = template else { continue };
        let pod = template.get("spec").cloned().unwrap_or(Value::Null);
        let annotations = value_at(template, &["metadata", "annotations"]);
        let grace_seconds = pod
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30);
        for list in ["initContainers", "containers"] {
            for container in sequence(pod.get(list)) {
                let image = str_at(container, &["image"]).unwrap_or_default();
                images.push(
                    image
                        .split([':', '@'])
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
                check_container(
                    catalog,
                    &objects,
                    dockerfile,
                    (&pod, container, annotations, grace_seconds),
                    findings,
                );
            }
        }
        for volume in sequence(pod.get("volumes")) {
            for (source, name_key) in [("secret", "secretName"), ("configMap", "name")] {
                if let Some(object) = value_at(volume, &[source, name_key]).and_then(scalar) {
                    let optional = value_at(volume, &[source, "optional"]).and_then(Value::as_bool);
                    if objects.get(source, &object).is_none() && optional != Some(true) {
                        findings.push(format!("volume uses {source} `{object}`, defined nowhere"));
                    }
                }
            }
        }
    }
    for (_, document) in &documents {
        if str_at(document, &["kind"]).as_deref() == Some("Kustomization") {
            for image in sequence(document.get("images")) {
                let name = str_at(image, &["name"]).unwrap_or_default();
                if !images.contains(&name) {
                    findings.at("deploy/k8s/kustomization.yaml");
                    findings.push(format!("images: `{name}` is used by no container"));
                }
            }
        }
    }
}

fn check_container(
    catalog: &Catalog,
    objects: &Objects,
    dockerfile: Option<&Dockerfile>,
    (pod, container, annotations, grace_seconds): (&Value, &Value, Option<&Value>, u64),
    findings: &mut Findings,
) {
    let image = str_at(container, &["image"]).unwrap_or_default();
    let binary = catalog.binary_named_by(&image);
    let command: Vec<String> = sequence(container.get("command"))
        .iter()
        .filter_map(scalar)
        .collect();
    let args: Vec<String> = sequence(container.get("args"))
        .iter()
        .filter_map(scalar)
        .collect();
    let Some(binary) = binary else {
        if image.contains("topk") {
            findings.push(format!("image `{image}` names no workspace binary"));
        }
        for variable in sequence(container.get("env")) {
            check_topk_env_anywhere(
                catalog,
                &str_at(variable, &["name"]).unwrap_or_default(),
                findings,
            );
        }
        check_argv(catalog, &[command, args].concat(), findings);
        return;
    };
    let mut runtime = Container::new(catalog, &binary, dockerfile);
    runtime.stop_grace_ms = grace_seconds * 1000;
    for source in sequence(container.get("envFrom")) {
        for kind in ["configMap", "secret"] {
            let Some(reference) = source.get(format!("{kind}Ref").as_str()) else {
                continue;
            };
            let name = str_at(reference, &["name"]).unwrap_or_default();
            let optional = reference.get("optional").and_then(Value::as_bool) == Some(true);
            match objects.get(kind, &name) {
                Some(keys) => runtime.env.extend(keys.clone()),
                None if optional => {}
                None => findings.push(format!("envFrom {kind} `{name}`, defined nowhere")),
            }
        }
    }
    for variable in sequence(container.get("env")) {
        let name = str_at(variable, &["name"]).unwrap_or_default();
        let value = str_at(variable, &["value"]);
        for kind in ["configMap", "secret"] {
            if let Some(reference) = value_at(variable, &["valueFrom", &format!("{kind}KeyRef")]) {
                let object = str_at(reference, &["name"]).unwrap_or_default();
                let key = str_at(reference, &["key"]).unwrap_or_default();
                let optional = reference.get("optional").and_then(Value::as_bool) == Some(true);
                match objects.get(kind, &object) {
                    Some(keys) if keys.contains_key(&key) => {}
                    None if optional => {}
                    _ => findings.push(format!("{name}: {kind} `{object}` has no key `{key}`")),
                }
            }
        }
        runtime.env.insert(name, value);
    }
    if command.is_empty() {
        check_invocation(catalog, &binary, &args, findings);
    } else {
        check_argv(catalog, &[command, args].concat(), findings);
    }
    let ports: Vec<(Option<String>, u16)> = sequence(container.get("ports"))
        .iter()
        .filter_map(|port| {
            let number = port.get("containerPort").and_then(Value::as_u64)?;
            Some((str_at(port, &["name"]), u16::try_from(number).ok()?))
        })
        .collect();
    runtime.ports = Some(ports.iter().map(|(_, number)| *number).collect());
    let volumes = sequence(pod.get("volumes"));
    for mount in sequence(container.get("volumeMounts")) {
        let path = str_at(mount, &["mountPath"]).unwrap_or_default();
        let volume_name = str_at(mount, &["name"]).unwrap_or_default();
        let files = volumes
            .iter()
            .find(|volume| str_at(volume, &["name"]).as_deref() == Some(volume_name.as_str()))
            .and_then(|volume| {
                let (kind, name) = if let Some(secret) = volume.get("secret") {
                    ("secret", str_at(secret, &["secretName"])?)
                } else {
                    ("configMap", str_at(volume.get("configMap")?, &["name"])?)
                };
                Some(objects.get(kind, &name)?.keys().cloned().collect())
            });
        runtime.mounts.push((path, files));
    }
    runtime.check(catalog, findings);

    let routes = catalog.routes(&binary);
    let port_matches = |port: &Value| match port {
        Value::Number(number) => ports
            .iter()
            .any(|(_, p)| Some(u64::from(*p)) == number.as_u64()),
        other => ports
            .iter()
            .any(|(name, _)| name.as_deref() == other.as_str()),
    };
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(http) = value_at(container, &[probe, "httpGet"]) else {
            continue;
        };
        let path = str_at(http, &["path"]).unwrap_or_default();
        if !routes.contains(&path) {
            findings.push(format!("{probe} path `{path}`: {binary} serves {routes:?}"));
        }
        if !http.get("port").is_some_and(port_matches) {
            findings.push(format!("{probe} port is none of the container's ports"));
        }
    }
    if let Some(annotations) = annotations {
        if let Some(port) = str_at(annotations, &["prometheus.io/port"]) {
            let number: u64 = port.parse().unwrap_or_default();
            if !port_matches(&Value::Number(number.into())) {
                findings.push(format!("prometheus.io/port {port} is not a container port"));
            }
        }
        if let Some(path) = str_at(annotations, &["prometheus.io/path"]) {
            if !routes.contains(&path) {
                findings.push(format!(
                    "prometheus.io/path `{path}`: {binary} serves {routes:?}"
                ));
            }
        }
    }
}

fn check_kustomization(dir: &Path, document: &Value, findings: &mut Findings) {
    for resource in sequence(document.get("resources")) {
        let file = scalar(resource).unwrap_or_default();
        if !dir.join(&file).exists() {
            findings.push(format!("resource `{file}` does not exist"));
        }
    }
}

pub fn value_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(*key))
}

pub fn str_at(value: &Value, path: &[&str]) -> Option<String> {
    value_at(value, path).and_then(scalar)
}

/// A scalar as text (numbers and booleans too).
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

pub fn sequence(value: Option<&Value>) -> &[Value] {
    value
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}
