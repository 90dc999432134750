//! Kubernetes manifests (deploy/k8s, and overlays such as deploy/k8s-cluster): workloads
//! against the binaries, ConfigMap/Secret references against the objects defined, probes and
//! scrape annotations against the routes the binaries serve, kustomization resources against
//! the files, one ClickHouse node and cluster for every binary, and the ClickHouse operator's
//! resources (ClickHouseInstallation, ClickHouseKeeperInstallation) against what the binaries
//! are pointed at. Kinds not known here are parsed and their Secret/ConfigMap references
//! checked, nothing else. An overlay is checked as kustomize renders it: its files, its
//! resources' (a folder: that folder's files, recursively), its strategic-merge patches applied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use crate::catalog::Catalog;
use crate::container::{check_one_clickhouse, Container};
use crate::dockerfile::Dockerfile;
use crate::findings::Findings;
use crate::invocation::{check_argv, check_invocation, check_topk_env_anywhere};

/// Every document of every YAML file in `dir`, with its file.
pub fn load_documents(dir: &Path, findings: &mut Findings) -> Vec<(PathBuf, Value)> {
    let mut documents = Vec::new();
    for path in crate::files_with_extensions(dir, &["yaml", "yml"]) {
        findings.at(crate::display(&path));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for document in serde_yaml::Deserializer::from_str(&text) {
            match Value::deserialize(document) {
                Ok(Value::Null) => {}
                Ok(value) => documents.push((path.clone(), value)),
                Err(error) => findings.push(format!("does not parse: {error}")),
            }
        }
    }
    documents
}

/// The documents of `dir` as its kustomization renders them: the files of `dir` (every YAML
/// file, as for the base: templates beside the kustomization count as defined), those of each
/// resource that is a folder (recursively), then the kustomization's patches applied.
fn load_kustomization(dir: &Path, findings: &mut Findings, depth: usize) -> Vec<(PathBuf, Value)> {
    let mut documents = load_documents(dir, findings);
    let kustomizations: Vec<(PathBuf, Value)> = documents
        .iter()
        .filter(|(_, document)| str_at(document, &["kind"]).as_deref() == Some("Kustomization"))
        .cloned()
        .collect();
    for (path, kustomization) in &kustomizations {
        for resource in sequence(kustomization.get("resources")) {
            let folder = dir.join(scalar(resource).unwrap_or_default());
            if folder.is_dir() && depth < 8 {
                documents.extend(load_kustomization(&folder, findings, depth + 1));
            }
        }
        findings.at(crate::display(path));
        apply_patches(dir, kustomization, &mut documents, findings);
    }
    documents
}

/// A kustomization's strategic-merge patches (`patches:` with `patch:` or `path:`,
/// `patchesStrategicMerge:`), each onto the document of the same kind and name.
fn apply_patches(
    dir: &Path,
    kustomization: &Value,
    documents: &mut [(PathBuf, Value)],
    findings: &mut Findings,
) {
    let mut texts = Vec::new();
    for entry in sequence(kustomization.get("patches")) {
        if let Some(inline) = str_at(entry, &["patch"]) {
            texts.push(inline);
        } else if let Some(file) = str_at(entry, &["path"]) {
            match std::fs::read_to_string(dir.join(&file)) {
                Ok(text) => texts.push(text),
                Err(error) => findings.push(format!("patch {file}: {error}")),
            }
        }
    }
    for entry in sequence(kustomization.get("patchesStrategicMerge")) {
        let text = scalar(entry).unwrap_or_default();
        texts.push(std::fs::read_to_string(dir.join(&text)).unwrap_or(text));
    }
    for text in texts {
        for document in serde_yaml::Deserializer::from_str(&text) {
            let patch = match Value::deserialize(document) {
                Ok(Value::Mapping(patch)) => Value::Mapping(patch),
                Ok(_) => {
                    findings.push("a patch that is no strategic-merge patch: not checked here");
                    continue;
                }
                Err(error) => {
                    findings.push(format!("a patch does not parse: {error}"));
                    continue;
                }
            };
            let kind = str_at(&patch, &["kind"]).unwrap_or_default();
            let name = str_at(&patch, &["metadata", "name"]).unwrap_or_default();
            let mut applied = false;
            for (_, document) in documents.iter_mut() {
                if str_at(document, &["kind"]).as_deref() == Some(kind.as_str())
                    && str_at(document, &["metadata", "name"]).as_deref() == Some(name.as_str())
                {
                    strategic_merge(document, &patch);
                    applied = true;
                }
            }
            if !applied {
                findings.push(format!("patch for {kind} {name}: no such resource"));
            }
        }
    }
}

/// Kubernetes' strategic merge, the part manifests use: mappings merge key by key (a null
/// removes the key), lists of named items (containers, env, volumes) merge item by name,
/// other lists and scalars are replaced.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let named = |items: &[Value]| items.iter().all(|item| item.get("name").is_some());
    match (target, patch) {
        (Value::Mapping(target), Value::Mapping(patch)) => {
            for (key, value) in patch {
                match (target.get_mut(key), value) {
                    (Some(_), Value::Null) => {
                        target.remove(key);
                    }
                    (Some(existing), value) => strategic_merge(existing, value),
                    (None, value) => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Sequence(target), Value::Sequence(patch)) if named(target) && named(patch) => {
            for item in patch {
                match target
                    .iter_mut()
                    .find(|existing| existing.get("name") == item.get("name"))
                {
                    Some(existing) => strategic_merge(existing, item),
                    None => target.push(item.clone()),
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// Keys (and values, for ConfigMaps) of the ConfigMaps and Secrets defined.
#[derive(Debug, Default)]
struct Objects {
    config_maps: BTreeMap<String, BTreeMap<String, Option<String>>>,
    secrets: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

impl Objects {
    fn collect(documents: &[(PathBuf, Value)]) -> Self {
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
    let documents = load_kustomization(dir, findings, 0);
    let objects = Objects::collect(&documents);
    let mut images = Vec::new();
    let mut deployment = Vec::new();
    for (path, document) in &documents {
        let kind = str_at(document, &["kind"]).unwrap_or_default();
        let name = str_at(document, &["metadata", "name"]).unwrap_or_default();
        let place = if path.parent() == Some(dir) {
            format!("{}: {kind} {name}", crate::display(path))
        } else {
            // A base's document, as the overlay `dir` renders it.
            format!(
                "{} (in {}): {kind} {name}",
                crate::display(path),
                crate::display(dir)
            )
        };
        findings.at(&place);
        if kind == "Kustomization" {
            check_kustomization(path.parent().unwrap_or(dir), document, findings);
            continue;
        }
        let template = match kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                document.get("spec").and_then(|spec| spec.get("template"))
            }
            "CronJob" => value_at(document, &["spec", "jobTemplate", "spec", "template"]),
            "ConfigMap" | "Secret" => None,
            // Custom resources (the ClickHouse operator's) and kinds without pods: only their
            // references to Secrets and ConfigMaps.
            _ => {
                check_references(&objects, document, findings);
                None
            }
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
                let runtime = check_container(
                    catalog,
                    &objects,
                    dockerfile,
                    (&pod, container, annotations, grace_seconds),
                    findings,
                );
                if let Some(runtime) = runtime {
                    let container_name = str_at(container, &["name"]).unwrap_or_default();
                    deployment.push((format!("{kind} {name} ({container_name})"), runtime));
                }
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
    for (path, document) in &documents {
        if str_at(document, &["kind"]).as_deref() == Some("Kustomization") {
            for image in sequence(document.get("images")) {
                let name = str_at(image, &["name"]).unwrap_or_default();
                if !images.contains(&name) {
                    findings.at(crate::display(path));
                    findings.push(format!("images: `{name}` is used by no container"));
                }
            }
        }
    }
    findings.at(crate::display(dir));
    check_one_clickhouse(catalog, &deployment, findings);
    check_clickhouse_installations(catalog, dir, &documents, &deployment, findings);
}

/// `secretKeyRef`/`configMapKeyRef` anywhere in a document (custom resources take them too,
/// e.g. a ClickHouseInstallation user's password) must name a key of an object defined.
fn check_references(objects: &Objects, value: &Value, findings: &mut Findings) {
    match value {
        Value::Mapping(mapping) => {
            for (key, child) in mapping {
                let kind = match scalar(key).as_deref() {
                    Some("secretKeyRef") => Some("secret"),
                    Some("configMapKeyRef") => Some("configMap"),
                    _ => None,
                };
                if let Some(kind) = kind {
                    let object = str_at(child, &["name"]).unwrap_or_default();
                    let wanted = str_at(child, &["key"]).unwrap_or_default();
                    let optional = child.get("optional").and_then(Value::as_bool) == Some(true);
                    let found = objects
                        .get(kind, &object)
                        .is_some_and(|keys| keys.contains_key(&wanted));
                    if !found && !optional {
                        findings.push(format!("{kind} `{object}` has no key `{wanted}`"));
                    }
                }
                check_references(objects, child, findings);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                check_references(objects, item, findings);
            }
        }
        _ => {}
    }
}

/// The ClickHouse operator's resources against each other and against the binaries: a
/// ClickHouseInstallation's Keeper (`keeper-<name>`) is a ClickHouseKeeperInstallation
/// defined here; every binary's TOPK_CLICKHOUSE_URL is ONE node's Service
/// (`chi-<installation>-<cluster>-<shard>-<replica>`), never the Services the operator
/// balances over all nodes (`clickhouse-<installation>`, `cluster-<installation>-<cluster>`);
/// TOPK_CLICKHOUSE_CLUSTER names one of its clusters, and is set when a cluster has more than
/// one node.
fn check_clickhouse_installations(
    catalog: &Catalog,
    dir: &Path,
    documents: &[(PathBuf, Value)],
    deployment: &[(String, Container)],
    findings: &mut Findings,
) {
    let of_kind = |wanted: &'static str| {
        documents
            .iter()
            .filter(move |(_, document)| str_at(document, &["kind"]).as_deref() == Some(wanted))
    };
    let keepers: BTreeSet<String> = of_kind("ClickHouseKeeperInstallation")
        .filter_map(|(_, document)| str_at(document, &["metadata", "name"]))
        .map(|name| format!("keeper-{name}"))
        .collect();
    let mut nodes = BTreeSet::new();
    let mut balanced = BTreeSet::new();
    let mut clusters = BTreeMap::new();
    for (path, installation) in of_kind("ClickHouseInstallation") {
        let name = str_at(installation, &["metadata", "name"]).unwrap_or_default();
        findings.at(format!(
            "{}: ClickHouseInstallation {name}",
            crate::display(path)
        ));
        balanced.insert(format!("clickhouse-{name}"));
        let configuration = value_at(installation, &["spec", "configuration"]);
        for cluster in sequence(configuration.and_then(|c| c.get("clusters"))) {
            let cluster_name = str_at(cluster, &["name"]).unwrap_or_default();
            let count = |key: &str| {
                value_at(cluster, &["layout", key])
                    .and_then(|count| scalar(count)?.parse::<u64>().ok())
                    .unwrap_or(1)
            };
            let (shards, replicas) = (count("shardsCount"), count("replicasCount"));
            for shard in 0..shards {
                for replica in 0..replicas {
                    nodes.insert(format!("chi-{name}-{cluster_name}-{shard}-{replica}"));
                }
            }
            balanced.insert(format!("cluster-{name}-{cluster_name}"));
            clusters.insert(cluster_name, shards * replicas);
        }
        let zookeeper = configuration.and_then(|c| value_at(c, &["zookeeper", "nodes"]));
        for node in sequence(zookeeper) {
            let host = str_at(node, &["host"]).unwrap_or_default();
            let service = host.split('.').next().unwrap_or_default();
            if service.starts_with("keeper-") && !keepers.contains(service) {
                findings.push(format!(
                    "zookeeper host `{host}`: no ClickHouseKeeperInstallation here makes it \
                     (defined: {keepers:?})"
                ));
            }
        }
    }
    if clusters.is_empty() {
        return;
    }
    for (place, container) in deployment {
        if !catalog.knows_env(&container.binary, "TOPK_CLICKHOUSE_URL") {
            continue;
        }
        findings.at(format!("{}: {place}", crate::display(dir)));
        if let Some(Some(url)) = container.effective(catalog, "clickhouse-url") {
            let host = url
                .split("://")
                .last()
                .unwrap_or_default()
                .split([':', '/', '.'])
                .next()
                .unwrap_or_default();
            if balanced.contains(host) {
                findings.push(format!(
                    "TOPK_CLICKHOUSE_URL `{url}` is a Service the operator balances over \
                     several nodes: a binary must reach one node (the statements of one flush \
                     or claim read what the previous ones wrote, which another replica may \
                     not have yet), one of {nodes:?}"
                ));
            } else if !nodes.contains(host) {
                findings.push(format!(
                    "TOPK_CLICKHOUSE_URL `{url}` is no ClickHouse node defined here ({nodes:?})"
                ));
            }
        }
        if let Some(Some(cluster)) = container.effective(catalog, "clickhouse-cluster") {
            if cluster.is_empty() {
                if clusters.values().any(|&hosts| hosts > 1) {
                    findings.push(format!(
                        "no TOPK_CLICKHOUSE_CLUSTER, but ClickHouse is a cluster {:?}: the \
                         binary would use the single-node schema",
                        clusters.keys().collect::<Vec<_>>()
                    ));
                }
            } else if !clusters.contains_key(&cluster) {
                findings.push(format!(
                    "TOPK_CLICKHOUSE_CLUSTER `{cluster}` is no cluster of the \
                     ClickHouseInstallation(s) ({:?})",
                    clusters.keys().collect::<Vec<_>>()
                ));
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
) -> Option<Container> {
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
        return None;
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
    Some(runtime)
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
