//! Claims and commits through ZooKeeper when aggregators write through different nodes
//! (`topk_core::coordination`): one line of owners per partition however the claimers race,
//! and exact counts when an aggregator and the node it wrote through are lost together.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use topk_core::claims::{Claim, ClaimOwner};
use topk_core::coordination::Coordinator;
use topk_core::db::ClickHouseOptions;
use topk_core::keeper::KeeperOptions;
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec};
use topk_tests::pipeline::Pipeline;
use topk_tests::proxy::{Action, FaultProxy, Rule};
use topk_tests::stack;

use crate::{cluster_up, node_pid, restart_stopped_nodes, zookeeper, CLUSTER};

/// Claimers racing for one partition, each through its own node, 8 × 6 claims.
const CLAIMERS: usize = 8;
const CLAIMS_EACH: usize = 6;

/// Every claimer claims partition 0 again and again through node `i % 4`; returns every
/// claim that was granted.
async fn race_for_a_partition(
    options: &ClickHouseOptions,
    coordinator: &Coordinator,
) -> Vec<Claim> {
    let urls = cluster_up();
    let mut tasks = Vec::new();
    for claimer in 0..CLAIMERS {
        let mut through = options.clone();
        through.clickhouse_url = urls[claimer % urls.len()].clone();
        let coordinator = coordinator.clone();
        tasks.push(tokio::spawn(async move {
            let client = through.client();
            let owner = ClaimOwner {
                consumer_group: "race-group".to_owned(),
                topic: "race-topic".to_owned(),
                worker: format!("claimer-{claimer}"),
            };
            let mut granted = Vec::new();
            for _ in 0..CLAIMS_EACH {
                match coordinator.claim_partition(&client, &owner, 0).await {
                    Ok(claim) => granted.push(claim),
                    // Contended: eight claimers on one partition, the others got in first;
                    // KeeperAhead: this claimer's node has not replicated the newest claim
                    // yet. Both are retried by an aggregator.
                    Err(
                        topk_core::claims::ClaimError::Contended { .. }
                        | topk_core::claims::ClaimError::KeeperAhead { .. },
                    ) => {}
                    Err(error) => panic!("claimer {claimer}: {error}"),
                }
            }
            granted
        }));
    }
    let mut claims = Vec::new();
    for task in tasks {
        claims.extend(task.await.expect("claimer task"));
    }
    claims
}

/// Two granted claims with the same parent: two owners both resumed after the same commit
/// and both write rows that count.
fn forks(claims: &[Claim]) -> Vec<(u64, Vec<u64>)> {
    let mut children: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for claim in claims {
        children
            .entry(claim.parent_claim_id)
            .or_default()
            .push(claim.claim_id);
    }
    children
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claimers_racing_through_every_node_form_one_line_of_owners() {
    let _shared = crate::shared().await;
    let urls = cluster_up();
    let options = stack::fresh_cluster_database("cluster_claim_race", &urls[0], CLUSTER).await;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let keeper = KeeperOptions {
        keeper_hosts: zookeeper(),
        keeper_root: format!("/topk-tests/claim-race-{run}"),
    };
    let coordinator =
        Coordinator::new(&keeper, &options.clickhouse_database).expect("keeper options");
    let claims = race_for_a_partition(&options, &coordinator).await;
    assert!(
        claims.len() >= CLAIMERS,
        "only {} claims were granted",
        claims.len()
    );
    assert_eq!(forks(&claims), Vec::new(), "claims that share a parent");
    // One line: each claim's parent is the claim granted just before it.
    let mut line = claims.clone();
    line.sort_by_key(|claim| claim.claim_id);
    for pair in line.windows(2) {
        assert_eq!(pair[1].parent_claim_id, pair[0].claim_id, "{pair:?}");
    }
    // The mirror every reader reads names the last claim as the newest, on every node.
    let newest = line.last().expect("claims").claim_id;
    for url in &urls {
        let client = ClickHouseOptions {
            clickhouse_url: url.clone(),
            ..options.clone()
        }
        .client();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mirrored: u64 = client
                .query("SELECT max(claim_id) FROM ingest_claims WHERE kafka_partition = 0")
                .fetch_one()
                .await
                .unwrap_or_else(|error| panic!("claims on {url}: {error}"));
            if mirrored == newest {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{url} names {mirrored} as the newest claim, not {newest}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Waits until `aggregator` has claimed its first partitions.
async fn wait_for_claims(aggregator: &topk_tests::process::ChildProcess) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !aggregator.log().contains("partitions claimed") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            aggregator.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Counted through every node once the killed node is back and caught up.
async fn assert_exact_everywhere(
    pipeline: &Pipeline,
    expected: &topk_loadgen::generate::MinuteCounts,
    aggregator: &topk_tests::process::ChildProcess,
) {
    for url in cluster_up() {
        let through = pipeline.through(&url);
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while &through.minute_counts().await != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "counts through {url} still differ after 180 s"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        through.assert_counts_equal(expected, aggregator).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_killed_with_its_node_is_replaced_through_another_node_exactly() {
    let _exclusive = crate::exclusive().await;
    let urls = cluster_up();
    let pipeline =
        Pipeline::on_cluster("cluster_node_lost", 4, &urls[0], CLUSTER, &zookeeper()).await;
    let mut spec = crate::faults::fault_traffic(30_000, 23);
    spec.duplicate_share = 0.05;
    let messages = generate(&spec);
    let expected = expected_minute_counts(&messages);
    let (before, during) = messages.split_at(12_000);

    // Two aggregators of one group, through ch3 and ch1. The one through ch3 joins first and
    // leads the consumer group: the test broker (tansu) stalls the group when its leader is
    // killed (tests/it/exactly_once.rs, case 2); Apache Kafka does not.
    let mut through_ch3 = pipeline.start_aggregator_to(&urls[2], "node-lost-ch3", &[]);
    wait_for_claims(&through_ch3).await;
    let mut through_ch1 = pipeline.start_aggregator_to(&urls[0], "node-lost-ch1", &[]);
    wait_for_claims(&through_ch1).await;
    pipeline.produce_unbatched(before).await;
    pipeline.wait_until_drained(Duration::from_secs(120)).await;

    // The first aggregator and its node die together, mid-ingest.
    pipeline.produce_unbatched(&during[..6_000]).await;
    through_ch1.kill_hard();
    let pid = node_pid(1);
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success(),
        "kill ch1"
    );
    // Its replacement writes through ch2 (with ClickHouse claims, pointing a worker at
    // another node while the old one may hold unreplicated claims is unsafe; through
    // Keeper it is the normal course).
    // The killed member's session expires first (tansu: 10 s), so that the group rebalances
    // once, to the survivor, before the replacement joins.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut through_ch2 = pipeline.start_aggregator_to(&urls[1], "node-lost-ch2", &[]);
    pipeline.produce_unbatched(&during[6_000..]).await;
    // Progress is read through a live node (the pipeline's own endpoint is ch1).
    pipeline
        .through(&urls[1])
        .wait_until_drained(Duration::from_secs(240))
        .await;
    assert!(through_ch3.is_running(), "{}", through_ch3.log_tail(20));
    assert!(through_ch2.is_running(), "{}", through_ch2.log_tail(20));

    restart_stopped_nodes();
    // ch1 replicates again once its old ZooKeeper session expired, then fetches what it
    // missed; until then a Distributed read through it refuses (no up-to-date replica of its
    // own shard within 30 s), as it should.
    let local = format!("{}_local", pipeline.clickhouse.clickhouse_database);
    let caught_up = std::time::Instant::now() + Duration::from_secs(180);
    while crate::faults::local_sums(&urls[0], &local).await
        != crate::faults::local_sums(&urls[1], &local).await
    {
        assert!(
            std::time::Instant::now() < caught_up,
            "ch1 did not catch up with ch2 in 180 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_exact_everywhere(&pipeline, &expected, &through_ch2).await;
    assert_eq!(through_ch2.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(through_ch3.terminate(Duration::from_secs(30)), Some(0));
    // A server killed and started again can come back with its distributed-DDL worker
    // inactive on 18.16 (later `ON CLUSTER` statements then wait for it until they time
    // out): restart the servers for the tests after this one, as after the ZooKeeper outage.
    crate::stack_script(&["down", "cluster"]);
    crate::stack_script(&["up", "cluster"]);
}

/// Inserts of minute rows and of commit rows (the mirror), as the fault proxy sees them.
const ROWS_INSERT: &str = "INSERT INTO `plays_minute`";
const COMMITS_INSERT: &str = "INSERT INTO `flush_commits`";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_on_the_way_to_keeper_and_the_mirror_count_once() {
    let _shared = crate::shared().await;
    let urls = cluster_up();
    let pipeline =
        Pipeline::on_cluster("cluster_lost_answers", 2, &urls[0], CLUSTER, &zookeeper()).await;
    let mut spec = GeneratorSpec::new(16_000, Utc::now());
    spec.users = 1_000;
    spec.songs = 4_000;
    spec.seed = 24;
    spec.duplicate_share = 0.05;
    let messages = generate(&spec);
    let expected = expected_minute_counts(&messages);
    let slices: Vec<&[_]> = messages.chunks(messages.len() / 4 + 1).collect();
    let proxy = FaultProxy::start(&urls[0]).await;
    let mut aggregator = pipeline.start_aggregator_to(&proxy.url(), "lost-answers", &[]);
    pipeline.produce_unbatched(slices[0]).await;
    pipeline.wait_until_drained(Duration::from_secs(120)).await;

    // A commit made in Keeper whose mirror row landed but whose answer was lost: the next
    // attempt finds the commit in the node and the row in the mirror.
    let lost_commit =
        proxy.add_rule(Rule::new(COMMITS_INSERT, Action::DropResponseAfterForward).times(1));
    pipeline.produce_unbatched(slices[1]).await;
    assert!(
        lost_commit.wait_for_hit(Duration::from_secs(60)).await,
        "{}",
        aggregator.log_tail(20)
    );
    pipeline.wait_until_drained(Duration::from_secs(120)).await;

    // Minute rows that landed with their answer lost: the claim is renewed through Keeper
    // and the flush written again under the new claim; the first copy never counts.
    let lost_rows =
        proxy.add_rule(Rule::new(ROWS_INSERT, Action::DropResponseAfterForward).times(1));
    pipeline.produce_unbatched(slices[2]).await;
    assert!(
        lost_rows.wait_for_hit(Duration::from_secs(60)).await,
        "{}",
        aggregator.log_tail(20)
    );
    pipeline.wait_until_drained(Duration::from_secs(120)).await;

    // Minute rows that never arrived (the connection reset).
    let reset = proxy.add_rule(Rule::new(ROWS_INSERT, Action::Reset).times(1));
    pipeline.produce_unbatched(slices[3]).await;
    assert!(
        reset.wait_for_hit(Duration::from_secs(60)).await,
        "{}",
        aggregator.log_tail(20)
    );
    pipeline.wait_until_drained(Duration::from_secs(120)).await;

    for url in &urls {
        let through = pipeline.through(url);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while through.minute_counts().await != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "counts through {url} still differ after 60 s"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        through.assert_counts_equal(&expected, &aggregator).await;
    }
    let log = aggregator.log();
    assert!(
        log.contains("retrying the flush under a renewed claim"),
        "the lost rows were not settled by a renewed claim"
    );
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));
}
