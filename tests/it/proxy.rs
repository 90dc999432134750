//! The fault proxy against the real ClickHouse: faults a SIGKILL cannot produce, as the
//! official client sees them.

use std::time::Duration;

use clickhouse::Row;
use serde::Serialize;
use topk_core::db::ClickHouseOptions;
use topk_tests::proxy::{Action, FaultProxy, Rule};
use topk_tests::stack;

#[derive(Debug, Row, Serialize)]
struct ProxyRow {
    id: u64,
    note: String,
}

/// A fresh database with an empty `proxy_rows` table, and a proxy in front of ClickHouse.
async fn database_behind_proxy(test_name: &str) -> (ClickHouseOptions, FaultProxy) {
    let direct = stack::fresh_database(test_name).await;
    direct
        .client()
        .query("CREATE TABLE proxy_rows (id UInt64, note String) ENGINE = MergeTree ORDER BY id")
        .execute()
        .await
        .expect("create proxy_rows");
    let proxy = FaultProxy::start(&direct.clickhouse_url).await;
    (direct, proxy)
}

async fn insert_row(client: &clickhouse::Client, id: u64) -> clickhouse::error::Result<()> {
    let mut insert = client.insert::<ProxyRow>("proxy_rows").await?;
    insert
        .write(&ProxyRow {
            id,
            note: format!("row {id}"),
        })
        .await?;
    insert.end().await
}

async fn rows_with_id(direct: &ClickHouseOptions, id: u64) -> u64 {
    direct
        .client()
        .query("SELECT count() FROM proxy_rows WHERE id = ?")
        .bind(id)
        .fetch_one::<u64>()
        .await
        .expect("count rows")
}

#[tokio::test]
async fn insert_whose_response_is_dropped_fails_but_lands() {
    let (direct, proxy) = database_behind_proxy("proxy_dropped_response").await;
    // The client escapes the table name; the SQL travels in the `query=` parameter.
    let rule = proxy
        .add_rule(Rule::new("INSERT INTO `proxy_rows`", Action::DropResponseAfterForward).times(1));
    let proxied = ClickHouseOptions::new(proxy.url(), &direct.clickhouse_database).client();

    let result = insert_row(&proxied, 1).await;
    assert!(result.is_err(), "the client sees no response: {result:?}");
    assert_eq!(rule.hits(), 1);
    assert_eq!(
        rows_with_id(&direct, 1).await,
        1,
        "the server committed the row"
    );

    insert_row(&proxied, 2).await.expect("the rule is used up");
    assert_eq!(rows_with_id(&direct, 2).await, 1);
    let seen = proxy.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0]
            .target
            .contains("query=INSERT INTO `proxy_rows`(`id`,`note`) FORMAT RowBinary"),
        "{:?}",
        seen[0].target
    );
}

#[tokio::test]
async fn held_insert_lands_after_the_client_gave_up() {
    let (direct, proxy) = database_behind_proxy("proxy_held_insert").await;
    let rule = proxy.add_rule(Rule::new("INSERT INTO `proxy_rows`", Action::Hold));
    let proxied = ClickHouseOptions::new(proxy.url(), &direct.clickhouse_database).client();

    let gave_up = tokio::time::timeout(Duration::from_secs(1), insert_row(&proxied, 7)).await;
    assert!(
        gave_up.is_err(),
        "the insert is held past the client's deadline"
    );
    assert!(rule.wait_for_hit(Duration::from_secs(5)).await);
    assert_eq!(rows_with_id(&direct, 7).await, 0, "held, not yet written");

    rule.release();
    assert!(
        rule.wait_for_held_forwarded(1, Duration::from_secs(10))
            .await,
        "the released insert got its response from ClickHouse"
    );
    assert_eq!(rows_with_id(&direct, 7).await, 1, "the late write landed");
}
