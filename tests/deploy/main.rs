//! The deploy files (deploy/) against the code, so they cannot drift from it.
//!
//! What the binaries accept is read at test time, never copied: every workspace `[[bin]]` is
//! run with `--help` (and each subcommand), which lists every flag and its `TOPK_*` variable;
//! `TOPK_*` names the libraries read directly (`std::env::var`) and the HTTP routes the crates
//! serve are read from their sources. Then every Dockerfile, Kubernetes manifest, compose file,
//! systemd unit, env file and TOML config must parse and use only what exists, and a few
//! deployment invariants must hold (grace period > shutdown deadline, listen addresses
//! reachable in containers, consumers ≤ partitions, referenced ConfigMaps/Secrets/keys exist,
//! every binary on the same ClickHouse node and cluster). Compose overrides are checked merged
//! over compose.yaml, kustomize overlays (deploy/k8s-cluster) as rendered.
//!
//! Needs the binaries (`cargo build --workspace --bins`), not the stack:
//! `cargo test -p topk-tests --test deploy`.

mod catalog;
mod compose;
mod container;
mod dockerfile;
mod findings;
mod hosts;
mod invocation;
mod kubernetes;

use std::path::{Path, PathBuf};

use catalog::Catalog;
use dockerfile::Dockerfile;
use findings::Findings;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// A path for messages: from its `deploy/` component on, else relative to the repository.
pub fn display(path: &Path) -> String {
    let text = path.to_string_lossy();
    if let Some(index) = text.rfind("/deploy/") {
        return text[index + 1..].to_owned();
    }
    path.strip_prefix(repo_root()).map_or_else(
        |_| text.into_owned(),
        |relative| relative.display().to_string(),
    )
}

/// Files directly in `dir` whose extension is one of `extensions`, sorted.
pub fn files_with_extensions(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| {
                    path.is_file()
                        && path
                            .extension()
                            .is_some_and(|extension| extensions.iter().any(|e| extension == *e))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(all_files(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Every check over a deploy tree (`deploy/` or a copy of it).
fn check_deploy_tree(catalog: &Catalog, deploy: &Path) -> Findings {
    let mut findings = Findings::default();
    let mut main_dockerfile = None;
    for path in all_files(deploy) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        findings.at(display(&path));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if name.starts_with("Dockerfile") {
            match Dockerfile::parse(&text) {
                Ok(dockerfile) => {
                    dockerfile::check(catalog, &dockerfile, &mut findings);
                    if path.parent() == Some(&deploy.join("docker")) && name == "Dockerfile" {
                        main_dockerfile = Some(dockerfile);
                    }
                }
                Err(error) => findings.push(format!("does not parse: {error}")),
            }
        } else if name.ends_with(".json") {
            if let Err(error) = serde_json::from_str::<serde_json::Value>(&text) {
                findings.push(format!("does not parse: {error}"));
            }
        } else if name.ends_with(".toml") {
            if let Err(error) = text.parse::<toml::Table>() {
                findings.push(format!("does not parse: {error}"));
            }
        }
    }
    if main_dockerfile.is_none() {
        findings.at(display(deploy));
        findings.push("no docker/Dockerfile");
    }
    kubernetes::check(
        catalog,
        &deploy.join("k8s"),
        main_dockerfile.as_ref(),
        &mut findings,
    );
    // Overlays (deploy/k8s-cluster: the base plus a ClickHouse cluster), checked as kustomize
    // renders them: their resources, the base's, the patches applied.
    for path in all_files(deploy) {
        let in_base = path.parent() == Some(&deploy.join("k8s"));
        if !in_base
            && path
                .file_name()
                .is_some_and(|name| name == "kustomization.yaml")
        {
            kubernetes::check(
                catalog,
                path.parent().unwrap(),
                main_dockerfile.as_ref(),
                &mut findings,
            );
        }
    }
    compose::check_dir(catalog, &deploy.join("compose"), &mut findings);
    hosts::check_systemd(catalog, &deploy.join("systemd"), &mut findings);
    findings
}

fn workspace_catalog() -> Catalog {
    let catalog = Catalog::from_workspace(&repo_root());
    // Guard the checks that look for particular options: if these are renamed, the checks
    // must follow (otherwise they would silently check nothing).
    let aggregator = catalog
        .spec("topk-aggregator")
        .expect("topk-aggregator is built");
    for flag in [
        "shutdown-timeout-ms",
        "metrics-listen",
        "kafka-group-id",
        "plays-topic",
    ] {
        assert!(
            aggregator.flags.contains_key(flag),
            "topk-aggregator lost --{flag}"
        );
    }
    assert!(catalog
        .spec("topk-api")
        .expect("topk-api")
        .flags
        .contains_key("listen"));
    assert!(
        catalog.direct_env.contains("TOPK_LOG_FORMAT"),
        "TOPK_LOG_FORMAT is no longer read by any library: {:?}",
        catalog.direct_env
    );
    catalog
}

#[test]
fn deploy_files_match_the_binaries() {
    let catalog = workspace_catalog();
    let mut findings = check_deploy_tree(&catalog, &repo_root().join("deploy"));
    hosts::check_example_configs(&catalog, &mut findings);
    assert!(
        findings.is_empty(),
        "{} problem(s) in deploy files:\n{}",
        findings.items().len(),
        findings.items().join("\n")
    );
}

/// Copies `deploy/` to a scratch directory, applies one edit, and returns the findings.
fn findings_after_edit(catalog: &Catalog, file: &str, from: &str, to: &str) -> Vec<String> {
    let scratch = std::env::temp_dir().join(format!(
        "topk-deploy-mutant-{}-{}",
        std::process::id(),
        file.replace('/', "_")
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    let source = repo_root().join("deploy");
    for path in all_files(&source) {
        let target = scratch
            .join("deploy")
            .join(path.strip_prefix(&source).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&path, &target).unwrap();
    }
    let edited = scratch.join("deploy").join(file);
    let text = std::fs::read_to_string(&edited).unwrap();
    assert!(
        text.contains(from),
        "{file} no longer contains `{from}`: update this test"
    );
    std::fs::write(&edited, text.replacen(from, to, 1)).unwrap();
    let findings = check_deploy_tree(catalog, &scratch.join("deploy"));
    std::fs::remove_dir_all(&scratch).unwrap();
    findings.items().to_vec()
}

/// The checks catch drift: each edit of a real deploy file is reported.
#[test]
fn edits_that_break_deploy_files_are_reported() {
    let catalog = workspace_catalog();
    let cases = [
        // A variable no binary reads, set for the aggregator in compose.
        (
            "compose/compose.yaml",
            "TOPK_MEMORY_LIMIT_MB:",
            "TOPK_NOPE:",
            "does not read `TOPK_NOPE`",
        ),
        // A flag the loadgen does not have.
        (
            "compose/compose.yaml",
            "- --late-share",
            "- --late-shares",
            "no flag `--late-shares`",
        ),
        // A subcommand the rollup does not have, inside the shell loop.
        (
            "compose/compose.yaml",
            "topk-rollup run --prune;",
            "topk-rollup rollup;",
            "no subcommand `rollup`",
        ),
        // The rollup's ClickHouse options go before the subcommand.
        (
            "k8s/rollup-cronjob.yaml",
            "args: [\"run\", \"--prune\"]",
            "args: [\"run\", \"--clickhouse-url\", \"x\"]",
            "`topk-rollup run` has no flag `--clickhouse-url`",
        ),
        // A variable the API does not read, in the API's ConfigMap.
        (
            "k8s/configmap.yaml",
            "TOPK_API_QUERY_TIMEOUT_MS:",
            "TOPK_API_TIMEOUT_MS:",
            "does not read `TOPK_API_TIMEOUT_MS`",
        ),
        // The aggregator's variables in the API's ConfigMap.
        (
            "k8s/api.yaml",
            "name: topk-api\n          env:",
            "name: topk-aggregator\n          env:",
            "`topk-api` does not read `TOPK_KAFKA_BROKERS`",
        ),
        // SIGKILL before the aggregator's final flush.
        (
            "k8s/aggregator.yaml",
            "terminationGracePeriodSeconds: 60",
            "terminationGracePeriodSeconds: 30",
            "not longer than its shutdown timeout",
        ),
        (
            "compose/compose.yaml",
            "stop_grace_period: 45s",
            "stop_grace_period: 20s",
            "not longer than its shutdown timeout",
        ),
        (
            "systemd/topk-aggregator.service",
            "TimeoutStopSec=60",
            "TimeoutStopSec=30",
            "not longer than its shutdown timeout",
        ),
        // Probes and scrape annotations on routes the binaries do not serve.
        (
            "k8s/api.yaml",
            "path: /readyz",
            "path: /ready",
            "readinessProbe path `/ready`",
        ),
        (
            "k8s/aggregator.yaml",
            "prometheus.io/port: \"9464\"",
            "prometheus.io/port: \"9465\"",
            "prometheus.io/port 9465",
        ),
        // The aggregator's metrics on loopback inside a container.
        (
            "k8s/configmap.yaml",
            "TOPK_METRICS_LISTEN: \"0.0.0.0:9464\"",
            "TOPK_METRICS_LISTEN: \"127.0.0.1:9464\"",
            "loopback",
        ),
        // A Secret key that does not exist; a public key file the mounted Secret does not hold.
        (
            "k8s/migrate-job.yaml",
            "key: password",
            "key: passwd",
            "has no key `passwd`",
        ),
        (
            "k8s/configmap.yaml",
            "/etc/topk/jwt/public.pem",
            "/etc/topk/jwt/key.pem",
            "not `key.pem`",
        ),
        // More consumers than partitions.
        (
            "compose/compose.yaml",
            "replicas: 2",
            "replicas: 5",
            "5 replicas of topk-aggregator",
        ),
        // Images: an entrypoint that is no binary; a stage that copies a binary that is not built.
        (
            "docker/Dockerfile",
            "ENTRYPOINT [\"/usr/local/bin/topk-api\"]",
            "ENTRYPOINT [\"/usr/local/bin/topk-apis\"]",
            "`/usr/local/bin/topk-apis` is not a binary",
        ),
        (
            "docker/Dockerfile",
            "target/release/topk-rollup ",
            "target/release/topk-rollups ",
            "`target/release/topk-rollups` is not a binary",
        ),
        // systemd: an unknown option in a config file, an unknown variable in an env file.
        (
            "systemd/aggregator.toml",
            "flush_interval_ms",
            "flush_every_ms",
            "`flush_every_ms` is not an option of topk-aggregator",
        ),
        (
            "systemd/rollup.env.example",
            "TOPK_DAILY_RETENTION_DAYS",
            "TOPK_RETENTION_DAYS",
            "does not read `TOPK_RETENTION_DAYS`",
        ),
        (
            "systemd/topk-rollup.service",
            "topk-rollup run --prune",
            "topk-rollup run --purge",
            "no flag `--purge`",
        ),
        // A compose build target that is no Dockerfile stage.
        (
            "compose/compose.yaml",
            "target: topk-api }",
            "target: topk-web }",
            "build target `topk-web`",
        ),
        // The restore template: a flag the restore subcommand does not have.
        (
            "k8s/restore-job.example.yaml",
            "\"--to\", \"2026-11-21\"",
            "\"--until\", \"2026-11-21\"",
            "`topk-rollup restore` has no flag `--until`",
        ),
        // The cluster override (merged over compose.yaml): an unknown variable, a mounted file
        // that is not there, a dependency on no service, a cluster no node defines, one binary
        // without Keeper.
        (
            "compose/compose.cluster.yaml",
            "TOPK_CLICKHOUSE_CLUSTER: topk",
            "TOPK_CLICKHOUSE_CLUSTERS: topk",
            "does not read `TOPK_CLICKHOUSE_CLUSTERS`",
        ),
        (
            "compose/compose.cluster.yaml",
            "./clickhouse-cluster.xml:",
            "./clickhouse-clusters.xml:",
            "mounts `./clickhouse-clusters.xml`, which does not exist",
        ),
        (
            "compose/compose.cluster.yaml",
            "ch-s2-r2: { condition",
            "ch-s2-r3: { condition",
            "depends on `ch-s2-r3`, which is no service",
        ),
        (
            "compose/compose.cluster.yaml",
            "TOPK_CLICKHOUSE_CLUSTER: topk",
            "TOPK_CLICKHOUSE_CLUSTER: topk2",
            "TOPK_CLICKHOUSE_CLUSTER is `topk2`, a cluster in the remote_servers of no",
        ),
        (
            "compose/compose.cluster.yaml",
            "  aggregator:\n    environment:\n      <<: *topk-cluster\n      TOPK_KEEPER_HOSTS: keeper:9181\n",
            "  aggregator:\n    environment:\n      <<: *topk-cluster\n",
            "service aggregator runs on a ClickHouse cluster without TOPK_KEEPER_HOSTS",
        ),
        // The Kubernetes cluster overlay: the operator's balanced Service instead of one node,
        // a binary without the cluster option, a cluster the installation lacks, a Keeper it
        // does not define, a Secret key that is not there, a patch of nothing, an unknown
        // variable in a patched ConfigMap.
        (
            "k8s-cluster/kustomization.yaml",
            "TOPK_KEEPER_HOSTS: \"keeper-topk-keeper:2181\"",
            "TOPK_KEEPER_HOSTS: \"\"",
            "on a ClickHouse cluster without TOPK_KEEPER_HOSTS",
        ),
        (
            "k8s-cluster/kustomization.yaml",
            "TOPK_CLICKHOUSE_URL: \"http://chi-topk-topk-0-0:8123\"",
            "TOPK_CLICKHOUSE_URL: \"http://clickhouse-topk:8123\"",
            "is a Service the operator balances over several nodes",
        ),
        (
            "k8s-cluster/kustomization.yaml",
            "value: \"topk\"",
            "value: \"\"",
            "no TOPK_CLICKHOUSE_CLUSTER, but ClickHouse is a cluster",
        ),
        (
            "k8s-cluster/kustomization.yaml",
            "TOPK_CLICKHOUSE_CLUSTER: \"topk\"",
            "TOPK_CLICKHOUSE_CLUSTER: \"topk2\"",
            "TOPK_CLICKHOUSE_CLUSTER `topk2` is no cluster of the",
        ),
        (
            "k8s-cluster/clickhouse-installation.yaml",
            "host: keeper-topk-keeper",
            "host: keeper-topk",
            "zookeeper host `keeper-topk`: no ClickHouseKeeperInstallation",
        ),
        (
            "k8s-cluster/clickhouse-installation.yaml",
            "key: password",
            "key: passwd",
            "secret `topk-clickhouse` has no key `passwd`",
        ),
        (
            "k8s-cluster/kustomization.yaml",
            "name: topk-rollup",
            "name: topk-rollups",
            "patch for CronJob topk-rollups: no such resource",
        ),
        (
            "k8s-cluster/kustomization.yaml",
            "TOPK_CLICKHOUSE_SETTINGS: \"insert_distributed_sync=1\"",
            "TOPK_CLICKHOUSE_SETTING: \"insert_distributed_sync=1\"",
            "`topk-aggregator` does not read `TOPK_CLICKHOUSE_SETTING`",
        ),
    ];
    let mut missed = Vec::new();
    for (file, from, to, expected) in cases {
        let findings = findings_after_edit(&catalog, file, from, to);
        if !findings.iter().any(|finding| finding.contains(expected)) {
            missed.push(format!(
                "{file}: `{from}` -> `{to}` expected `{expected}`, got {findings:#?}"
            ));
        }
    }
    assert!(
        missed.is_empty(),
        "edits not caught:\n{}",
        missed.join("\n")
    );
}

/// The checker itself, on a made-up binary (no build needed).
#[test]
fn checker_rejects_unknown_env_flags_and_binaries() {
    let help = "Usage: topk-demo [OPTIONS] [COMMAND]\n\nCommands:\n  run  Run\n\nOptions:\n      \
                --listen <LISTEN>\n          Address [env: TOPK_DEMO_LISTEN=] [default: \
                127.0.0.1:1]\n  -h, --help\n          Print help\n";
    let mut spec = catalog::CommandSpec::from_help(help);
    spec.subcommands.insert(
        "run".into(),
        catalog::CommandSpec::from_help("Options:\n      --fast\n          Fast\n"),
    );
    let mut catalog = Catalog::default();
    catalog.binaries.insert(
        "topk-demo".into(),
        catalog::Binary {
            crate_dir: PathBuf::from("/nonexistent"),
            spec,
        },
    );
    let mut findings = Findings::default();
    invocation::check_env_for(&catalog, "topk-demo", "TOPK_NOPE", &mut findings);
    invocation::check_env_for(&catalog, "topk-demo", "TOPK_DEMO_LISTEN", &mut findings);
    invocation::check_env_for(&catalog, "topk-demo", "AWS_REGION", &mut findings);
    let argv = |text: &str| {
        text.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    invocation::check_argv(
        &catalog,
        &argv("topk-demo --listen x run --fast"),
        &mut findings,
    );
    invocation::check_argv(
        &catalog,
        &argv("/bin/topk-demo run --listen x"),
        &mut findings,
    );
    invocation::check_argv(&catalog, &argv("topk-demo walk"), &mut findings);
    invocation::check_argv(&catalog, &argv("topk-nope --help"), &mut findings);
    invocation::check_shell(
        &catalog,
        "sleep 1; TOPK_NOPE=1 topk-demo run --slow",
        &mut findings,
    );
    let container = container::Container {
        binary: "topk-demo".into(),
        containerized: true,
        ..container::Container::default()
    };
    container.check(&catalog, &mut findings);
    let items = findings.items();
    let expected = [
        "`topk-demo` does not read `TOPK_NOPE`",
        "`topk-demo run` has no flag `--listen`",
        "`topk-demo` has no subcommand `walk`",
        "`topk-nope` is not a binary of the workspace",
        "no binary reads `TOPK_NOPE`",
        "`topk-demo run` has no flag `--slow`",
        "--listen is `127.0.0.1:1`: loopback",
    ];
    for message in expected {
        assert!(
            items.iter().any(|item| item.contains(message)),
            "missing `{message}` in {items:#?}"
        );
    }
    assert_eq!(items.len(), expected.len(), "{items:#?}");
}
