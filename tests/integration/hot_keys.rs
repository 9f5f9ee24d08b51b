//! Issue 13, item 7 on DynamoDB: the hot GSI3 partitions are sharded (`TIER#<tier>#<n>`,
//! `AGENTS#ONLINE#<n>`), and every reader covers every shard: the sweeper's aging scan pages
//! through all of a tier's shards oldest first, an agency's queue figures count them all, and
//! the stale-agent scan finds a silent agent in any shard. A batch's chunk counters are spread
//! over 16 partitions and summed from all of them.

use integration_tests::{stack, unique_agency};
use serde_json::json;
use shared::domain::{AgencyId, Caller, Priority, Role, TaskId, UserId};
use shared::store::dynamo::keys;
use std::collections::HashSet;

#[tokio::test]
async fn the_sweeper_and_the_queue_figures_read_every_shard() {
    // Its own table: the sweeps below use clocks hours ahead and would touch other tests' work.
    let isolated = integration_tests::isolated_stack("taskflow-hot-keys").await;
    let clients = stack().clients().await;
    let config = integration_tests::worker_config(&isolated);
    let services = shared::services::Services::new(&config, &clients);
    let agency = AgencyId::parse(&unique_agency("shards")).unwrap();
    let boss = Caller {
        user: UserId::parse("boss").unwrap(),
        agency: agency.clone(),
        role: Role::Manager,
    };

    // People's low tasks (pending: waiting in GSI3) until every tier shard holds two.
    let mut per_shard = vec![0; keys::TIER_SHARDS as usize];
    let mut ids = Vec::new();
    while per_shard.iter().any(|&n| n < 2) {
        assert!(
            ids.len() < 100,
            "ids never reached every shard: {per_shard:?}"
        );
        let created = services
            .tasks
            .create(
                &boss,
                &json!({"title": format!("t{}", ids.len()), "priority": "low"}),
                None,
            )
            .await
            .expect("create");
        let id = TaskId::parse(created.task["id"].as_str().unwrap()).unwrap();
        per_shard[keys::task_tier_shard(id) as usize] += 1;
        ids.push(id);
    }

    // An agency's backlog counts every shard.
    let waiting = services
        .queues
        .index
        .agency_waiting(Priority::Low, &agency, 1000)
        .await
        .unwrap();
    assert_eq!((waiting.count, waiting.exact), (ids.len() as u64, true));

    // Low work ages after its threshold (hours): a clock past it sees all of it overdue. The
    // scan pages by 3 across the shards: every task once, oldest first.
    let later = chrono::Utc::now() + chrono::Duration::hours(5);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = services
            .queues
            .index
            .waiting(Priority::Low, false, later, after.as_ref(), 3)
            .await
            .unwrap();
        seen.extend(page.iter().cloned());
        if page.len() < 3 {
            break;
        }
        after = page.last().cloned();
        assert!(seen.len() <= ids.len(), "paging does not end: {seen:?}");
    }
    let seen_ids: Vec<TaskId> = seen.iter().map(|w| w.id).collect();
    assert_eq!(
        seen_ids.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>(),
        "every shard's work, once"
    );
    assert_eq!(seen_ids.len(), ids.len(), "no task twice");
    assert!(
        seen.windows(2).all(|w| w[0].since <= w[1].since),
        "oldest first across shards: {seen:?}"
    );

    // The sweep promotes the work of every shard, and the low tier is then empty.
    let report = services.sweeper.sweep(later).await.expect("sweep");
    assert_eq!(report.promoted, ids.len(), "{report:?}");
    let left = services
        .queues
        .index
        .waiting(Priority::Low, false, later, None, 100)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // Agents that fell silent, until every online shard holds one: the scan finds each.
    let agents = services.sweeper.agents.clone();
    let beat = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut shards = HashSet::new();
    let mut names = HashSet::new();
    while shards.len() < keys::ONLINE_AGENT_SHARDS as usize {
        assert!(names.len() < 200, "agents never reached every shard");
        let name = format!("agent-{}", names.len());
        shards.insert(keys::online_agents_partition(&agency, &name));
        agents
            .heartbeat(&agency, &UserId::parse(&name).unwrap(), &[], 1, beat)
            .await
            .expect("heartbeat");
        names.insert(name);
    }
    let stale: HashSet<String> = agents
        .stale(later)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.agency_id == agency)
        .map(|a| a.id.to_string())
        .collect();
    assert_eq!(stale, names, "a silent agent in any shard is found");
    let report = services.sweeper.sweep(later).await.expect("sweep");
    assert_eq!(report.agents_offline, names.len(), "{report:?}");
    isolated.stop().await;
}

/// Issue 13, item 7: a batch's chunk counters are spread over 16 partitions
/// (`AGENCY#a#TASK#<batch>#C<chunk % 16>`), not kept on the batch's own partition, and a round's
/// counts still sum every chunk of every partition (and only that round's).
#[tokio::test]
async fn chunk_counters_spread_over_partitions_and_sum_every_one() {
    use shared::domain::{ChunkCounts, ChunkDone};
    use shared::ports::BatchStore;
    use shared::store::dynamo::COUNTER_SHARDS;
    let clients = stack().clients().await;
    let table = &stack().config.table_name;
    let store = shared::store::DynamoBatchStore::new(clients.dynamodb.clone(), table);
    let agency = AgencyId::parse(&unique_agency("counters")).unwrap();
    let batch = TaskId::generate();
    let chunks = 2 * COUNTER_SHARDS + 3;
    for (round, chunk) in (0..chunks).map(|c| (0, c)).chain([(1, 0), (1, 7)]) {
        store
            .start_chunk(&agency, batch, round, chunk, "attempt-1")
            .await
            .expect("start");
        let counts = ChunkCounts {
            processed: u64::from(chunk) + 1,
            success: u64::from(chunk),
            failed: 1,
        };
        assert!(store
            .add_counts(
                &agency,
                batch,
                round,
                chunk,
                "attempt-1",
                counts,
                &ChunkDone::default()
            )
            .await
            .expect("count"));
    }
    let n = u64::from(chunks);
    assert_eq!(
        store.round_counts(&agency, batch, 0).await.expect("sum"),
        ChunkCounts {
            processed: n * (n + 1) / 2,
            success: n * (n - 1) / 2,
            failed: n,
        }
    );
    assert_eq!(
        store.round_counts(&agency, batch, 1).await.expect("sum"),
        ChunkCounts {
            processed: 1 + 8,
            success: 7,
            failed: 2,
        }
    );
    // Where they are: every shard's partition holds its chunks, the batch's own none.
    let count = |pk: String| {
        let dynamodb = clients.dynamodb.clone();
        async move {
            dynamodb
                .query()
                .table_name(table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :chunk)")
                .expression_attribute_values(":pk", aws_sdk_dynamodb::types::AttributeValue::S(pk))
                .expression_attribute_values(
                    ":chunk",
                    aws_sdk_dynamodb::types::AttributeValue::S("CHUNK#".into()),
                )
                .send()
                .await
                .expect("query")
                .count()
        }
    };
    let own = keys::task_pk(&agency, batch);
    assert_eq!(count(own.clone()).await, 0, "none on the batch's partition");
    let mut spread = 0;
    for shard in 0..COUNTER_SHARDS {
        let held = count(format!("{own}#C{shard:02}")).await;
        assert!(held >= 2, "shard {shard} holds {held}");
        spread += held;
    }
    assert_eq!(spread, chunks as i32 + 2, "every counter, in its shard");
}
