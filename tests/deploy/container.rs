//! Checks that apply to one of our binaries running in a container, whatever the orchestrator:
//! the effective environment (image ENV, then the orchestrator's), listen addresses reachable
//! from outside, the stop grace period against the shutdown deadline, files it is told to read.

use std::collections::BTreeMap;

use crate::catalog::Catalog;
use crate::dockerfile::Dockerfile;
use crate::findings::Findings;

/// One container running a workspace binary, as an orchestrator file describes it.
#[derive(Debug, Default)]
pub struct Container {
    pub binary: String,
    /// Effective environment, lowest precedence first already applied (image ENV, then
    /// envFrom / env_file, then env / environment). Values from secrets are `None`.
    pub env: BTreeMap<String, Option<String>>,
    /// Ports the orchestrator exposes (container side); `None` when it does not say.
    pub ports: Option<Vec<u16>>,
    /// How long the orchestrator waits between SIGTERM and SIGKILL.
    pub stop_grace_ms: u64,
    /// (mount path, file names the mount holds if known).
    pub mounts: Vec<(String, Option<Vec<String>>)>,
    /// A container (not a host process): listen addresses must be reachable from outside
    /// and files it reads must come from volume mounts.
    pub containerized: bool,
}

impl Container {
    /// Starts from the image's ENV (the Dockerfile stage whose ENTRYPOINT is `binary`).
    pub fn new(catalog: &Catalog, binary: &str, dockerfile: Option<&Dockerfile>) -> Self {
        let mut env = BTreeMap::new();
        if let Some(dockerfile) = dockerfile {
            let stage = dockerfile.stages.iter().find(|stage| {
                dockerfile.entrypoint_binary(catalog, stage).as_deref() == Some(binary)
            });
            if let Some(stage) = stage {
                for (name, value) in dockerfile.env(stage) {
                    env.insert(name, Some(value));
                }
            }
        }
        Self {
            binary: binary.to_owned(),
            env,
            containerized: true,
            ..Self::default()
        }
    }

    /// The value the binary will use for a long flag: its env var if set, else the default.
    /// `Some(None)`: set from a secret, value unknown here.
    pub fn effective(&self, catalog: &Catalog, flag: &str) -> Option<Option<String>> {
        let spec = catalog.spec(&self.binary)?;
        let env_name = spec
            .env_to_flag
            .iter()
            .chain(
                spec.subcommands
                    .values()
                    .flat_map(|sub| sub.env_to_flag.iter()),
            )
            .find(|(_, env_flag)| env_flag.as_str() == flag)
            .map(|(name, _)| name.clone());
        if let Some(value) = env_name.and_then(|name| self.env.get(&name).cloned()) {
            return Some(value);
        }
        spec.default_of(flag)
            .map(|default| Some(default.to_owned()))
    }

    /// Every check of this module.
    pub fn check(&self, catalog: &Catalog, findings: &mut Findings) {
        for name in self.env.keys() {
            crate::invocation::check_env_for(catalog, &self.binary, name, findings);
        }
        let Some(spec) = catalog.spec(&self.binary) else {
            return;
        };
        for flag in spec.all_flags().into_iter().filter(|_| self.containerized) {
            if flag.ends_with("listen") {
                self.check_listen(catalog, &flag, findings);
            }
            if flag.ends_with("-file") {
                self.check_file(catalog, &flag, findings);
            }
        }
        if let Some(Some(timeout)) = self.effective(catalog, "shutdown-timeout-ms") {
            let timeout_ms: u64 = timeout.parse().unwrap_or(u64::MAX);
            if self.stop_grace_ms <= timeout_ms {
                findings.push(format!(
                    "{}: stop grace period {} ms is not longer than its shutdown timeout {} ms \
                     (SIGKILL before the final flush)",
                    self.binary, self.stop_grace_ms, timeout_ms
                ));
            }
        }
    }

    fn check_listen(&self, catalog: &Catalog, flag: &str, findings: &mut Findings) {
        let Some(Some(address)) = self.effective(catalog, flag) else {
            return;
        };
        if address.is_empty() || address.starts_with("${") {
            return;
        }
        let Some((host, port)) = address.rsplit_once(':') else {
            findings.push(format!(
                "{}: --{flag} `{address}` is not host:port",
                self.binary
            ));
            return;
        };
        if matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1") {
            findings.push(format!(
                "{}: --{flag} is `{address}`: loopback, unreachable from outside the container",
                self.binary
            ));
        }
        if let (Some(ports), Ok(port)) = (&self.ports, port.parse::<u16>()) {
            if !ports.contains(&port) {
                findings.push(format!(
                    "{}: --{flag} port {port} is not among the container's ports {ports:?}",
                    self.binary
                ));
            }
        }
    }

    /// A file option (`--jwt-rs256-public-key-file`) must point into a mount that holds it.
    fn check_file(&self, catalog: &Catalog, flag: &str, findings: &mut Findings) {
        let Some(Some(path)) = self.effective(catalog, flag) else {
            return;
        };
        if path.is_empty() {
            return;
        }
        let mount = self
            .mounts
            .iter()
            .filter(|(mount_path, _)| {
                path.starts_with(&format!("{}/", mount_path.trim_end_matches('/')))
            })
            .max_by_key(|(mount_path, _)| mount_path.len());
        match mount {
            None => findings.push(format!(
                "{}: --{flag} `{path}` is in no volume mount",
                self.binary
            )),
            Some((mount_path, Some(files))) => {
                let relative = path[mount_path.trim_end_matches('/').len() + 1..].to_owned();
                if !files.contains(&relative) {
                    findings.push(format!(
                        "{}: --{flag} `{path}`: the volume at {mount_path} holds {files:?}, not \
                         `{relative}`",
                        self.binary
                    ));
                }
            }
            Some((_, None)) => {}
        }
    }
}

/// Every container of one deployment that talks to ClickHouse must use the same cluster
/// setting (a binary without it would address tables the cluster layout does not have), and on
/// a cluster every binary that claims partitions and commits flushes (the aggregator, the
/// restore of `topk-rollup`) must do so through Keeper (`TOPK_KEEPER_HOSTS`): a claim in the
/// replicated coordination tables is atomic only on one server
/// (deploy/clickhouse-cluster/README.md). `deployment` holds (where, container) pairs; values
/// from secrets (unknown here) are skipped.
pub fn check_one_clickhouse(
    catalog: &Catalog,
    deployment: &[(String, Container)],
    findings: &mut Findings,
) {
    let mut clusters: BTreeMap<String, &str> = BTreeMap::new();
    for (place, container) in deployment {
        if !catalog.knows_env(&container.binary, "TOPK_CLICKHOUSE_URL") {
            continue;
        }
        if let Some(Some(value)) = container.effective(catalog, "clickhouse-cluster") {
            clusters.entry(value).or_insert(place);
        }
    }
    if clusters.len() > 1 {
        let all: Vec<String> = clusters
            .iter()
            .map(|(value, place)| format!("{place} has the ClickHouse cluster `{value}`"))
            .collect();
        findings.push(format!(
            "not every binary uses the same ClickHouse cluster (--clickhouse-cluster): {}; \
             every aggregator, the API, the rollup and the migration must use the same",
            all.join(", ")
        ));
    }
    if clusters.keys().all(String::is_empty) {
        return;
    }
    for (place, container) in deployment {
        // The aggregator claims all the time; `topk-rollup` only in its restore (the Job
        // templates named so), not in `run` or `migrate`.
        let claims = container.binary == "topk-aggregator" || place.contains("restore");
        if !claims || !catalog.knows_env(&container.binary, "TOPK_KEEPER_HOSTS") {
            continue;
        }
        let keeper = container.effective(catalog, "keeper-hosts");
        if matches!(keeper, None | Some(Some(_))) && keeper.flatten().unwrap_or_default().is_empty()
        {
            findings.push(format!(
                "{place} runs on a ClickHouse cluster without TOPK_KEEPER_HOSTS: its claims \
                 and commits would be made in replicated tables, atomic only on one server"
            ));
        }
    }
}
