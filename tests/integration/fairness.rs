//! Fair share between agencies within a tier: every message the project sends to a tier queue
//! carries `MessageGroupId` = its agency, so SQS fair queues keep one agency's backlog from
//! holding up another's. (The Step Functions senders are checked on the state machine
//! definitions by `infra/local/tests/state_machines.rs`.)

use aws_sdk_sqs::types::MessageSystemAttributeName;
use integration_tests::stack;
use shared::domain::{AgencyId, DispatchMessage, Priority, TaskId};
use shared::ports::Dispatcher;
use std::collections::BTreeMap;
use std::time::Duration;
use worker::QueueActions;

/// The group of the one message on `queue`.
async fn group_of_next(sqs: &aws_sdk_sqs::Client, queue: &str) -> Option<String> {
    let received = sqs
        .receive_message()
        .queue_url(queue)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .wait_time_seconds(5)
        .send()
        .await
        .expect("receive");
    let message = received.messages().first().expect("a message").clone();
    sqs.delete_message()
        .queue_url(queue)
        .receipt_handle(message.receipt_handle().unwrap())
        .send()
        .await
        .expect("delete");
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned()
}

#[tokio::test]
async fn every_sender_puts_its_agency_as_the_message_group() {
    let sqs = stack().clients().await.sqs;
    // A queue of its own: no poller takes the messages before the test reads them.
    let queue = sqs
        .create_queue()
        .queue_name(format!("fairness-{}", ulid::Ulid::new()))
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url");

    // The API's and the sweeper's dispatches.
    let urls = BTreeMap::from([(Priority::Normal, queue.clone())]);
    let dispatcher = shared::store::SqsDispatcher::new(sqs.clone(), urls.clone(), urls);
    let run = DispatchMessage {
        task_id: TaskId::generate(),
        agency_id: AgencyId::parse("fair-acme").unwrap(),
        dispatch_id: "d1".into(),
        priority: Priority::Normal,
        enqueued_at: chrono::Utc::now(),
    };
    dispatcher
        .dispatch(&run, Duration::ZERO)
        .await
        .expect("dispatch");
    assert_eq!(
        group_of_next(&sqs, &queue).await.as_deref(),
        Some("fair-acme")
    );

    // The worker's copies (a requeued chunk, a delayed retry, a dead letter).
    let chunk = r#"{"kind": "chunk", "batchId": "b", "agencyId": "fair-other", "chunkKey": "k", "chunkIndex": 0, "round": 0, "taskToken": "t"}"#;
    worker::SqsQueue::new(sqs.clone())
        .send(&queue, chunk, &[], Duration::ZERO)
        .await
        .expect("send");
    assert_eq!(
        group_of_next(&sqs, &queue).await.as_deref(),
        Some("fair-other")
    );
    let _ = sqs.delete_queue().queue_url(&queue).send().await;
}

fn fair_agency(prefix: &str) -> AgencyId {
    AgencyId::parse(&integration_tests::unique_agency(prefix)).expect("valid agency")
}

/// The slots' conditional writes on DynamoDB (moto): the cap, a holder's renewal, reclaiming
/// an expired holder, idempotent release, concurrent takers, and the tier's demand stamps.
#[tokio::test]
async fn in_flight_slots_hold_the_cap_under_concurrency_and_reclaim_expired_holders() {
    use shared::ports::InFlightSlots;
    let clients = stack().clients().await;
    let slots = shared::store::dynamo::DynamoInFlightSlots::new(
        clients.dynamodb.clone(),
        &stack().config.table_name,
    );
    let (acme, now) = (fair_agency("slots"), chrono::Utc::now());
    let tier = Priority::Low;
    let lease = now + chrono::Duration::seconds(60);
    // 12 takers at once (workers), cap 4: exactly 4 get a slot.
    let mut takers = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (slots, acme) = (slots.clone(), acme.clone());
        takers.spawn(async move {
            let holder = TaskId::generate();
            let taken = slots
                .acquire(&acme, tier, &holder.to_string(), lease, Some(4), now)
                .await;
            (holder, taken)
        });
    }
    let results = takers.join_all().await;
    let holders: Vec<TaskId> = results
        .iter()
        .filter(|(_, taken)| matches!(taken, Ok(true)))
        .map(|(holder, _)| *holder)
        .collect();
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    assert_eq!(holders.len(), 4, "{results:?}");
    assert_eq!(slots.held(&acme, tier, now).await.expect("read"), 4);
    // Full: a newcomer is refused, a holder renews its own.
    let newcomer = TaskId::generate();
    assert!(!slots
        .acquire(&acme, tier, &newcomer.to_string(), lease, Some(4), now)
        .await
        .expect("dynamodb"));
    assert!(slots
        .acquire(&acme, tier, &holders[0].to_string(), lease, Some(4), now)
        .await
        .expect("dynamodb"));
    // Releasing twice frees one slot.
    slots
        .release(&acme, tier, &holders[1].to_string())
        .await
        .expect("released");
    slots
        .release(&acme, tier, &holders[1].to_string())
        .await
        .expect("released again");
    assert_eq!(slots.held(&acme, tier, now).await.expect("read"), 3);
    assert!(slots
        .acquire(&acme, tier, &newcomer.to_string(), lease, Some(4), now)
        .await
        .expect("dynamodb"));
    // A holder that crashed (its lease ended) is reclaimed by the next taker, not before.
    let crashed_at = now + chrono::Duration::seconds(61);
    let late = TaskId::generate();
    assert!(!slots
        .acquire(
            &acme,
            tier,
            &late.to_string(),
            crashed_at,
            Some(4),
            now + chrono::Duration::seconds(30)
        )
        .await
        .expect("dynamodb"));
    assert!(slots
        .acquire(
            &acme,
            tier,
            &late.to_string(),
            crashed_at + chrono::Duration::seconds(60),
            Some(4),
            crashed_at
        )
        .await
        .expect("dynamodb"));
    assert_eq!(slots.held(&acme, tier, crashed_at).await.expect("read"), 1);
    slots
        .release(&acme, tier, &late.to_string())
        .await
        .expect("released");
    for holder in &holders {
        slots
            .release(&acme, tier, &holder.to_string())
            .await
            .expect("released");
    }
    slots
        .release(&acme, tier, &newcomer.to_string())
        .await
        .expect("released");
    assert_eq!(
        slots
            .held(&acme, tier, chrono::DateTime::UNIX_EPOCH)
            .await
            .expect("read"),
        0,
        "nothing left behind"
    );
    // Releasing on a tier never used is a no-op.
    slots
        .release(&acme, Priority::Background, &late.to_string())
        .await
        .expect("no map");

    // Demand: the two latest distinct agencies, so "anyone but me since t" is exact.
    let (a, b, c) = (fair_agency("da"), fair_agency("db"), fair_agency("dc"));
    let tier = Priority::Background;
    let t0 = chrono::Utc::now() + chrono::Duration::days(1); // after any other test's stamps
    slots.stamp_demand(tier, &a, t0).await.expect("stamp");
    assert!(!slots.others_waiting(tier, &a, t0).await.expect("read"));
    assert!(slots.others_waiting(tier, &b, t0).await.expect("read"));
    let t1 = t0 + chrono::Duration::seconds(1);
    slots.stamp_demand(tier, &b, t1).await.expect("stamp");
    slots.stamp_demand(tier, &b, t1).await.expect("stamp again");
    assert!(
        slots.others_waiting(tier, &b, t0).await.expect("read"),
        "a stamped at t0"
    );
    assert!(
        !slots.others_waiting(tier, &b, t1).await.expect("read"),
        "only b since t1"
    );
    assert!(slots.others_waiting(tier, &c, t1).await.expect("read"));
}

/// The dispatch window's writes on DynamoDB (moto): the size under concurrent enters, a
/// place's renewal and expiry, leave's answer, parked dispatches oldest first, and a parked
/// mark cleared only by the refill that read it.
#[tokio::test]
async fn dispatch_windows_hold_their_size_under_concurrency_and_keep_parked_runs_in_order() {
    use shared::ports::{DispatchWindow, Entry, Placement};
    let clients = stack().clients().await;
    let window = shared::store::dynamo::DynamoDispatchWindow::new(
        clients.dynamodb.clone(),
        &stack().config.table_name,
    );
    let (acme, now) = (fair_agency("window"), chrono::Utc::now());
    let tier = Priority::High;
    let lease = now + chrono::Duration::seconds(60);
    // 12 dispatchers at once, window 4: exactly 4 get a place.
    let mut takers = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (window, acme) = (window.clone(), acme.clone());
        takers.spawn(async move {
            let task = TaskId::generate();
            (
                task,
                window
                    .enter(&acme, tier, task, lease, 4, now, Entry::Dispatch)
                    .await,
            )
        });
    }
    let results = takers.join_all().await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    let placed: Vec<TaskId> = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(Placement::Entered)))
        .map(|(task, _)| *task)
        .collect();
    assert_eq!(placed.len(), 4, "{results:?}");
    let newcomer = TaskId::generate();
    assert_eq!(
        window
            .enter(&acme, tier, newcomer, lease, 4, now, Entry::Dispatch)
            .await
            .expect("dynamodb"),
        Placement::Full
    );
    assert_eq!(
        window
            .enter(&acme, tier, placed[0], lease, 4, now, Entry::Dispatch)
            .await
            .expect("dynamodb"),
        Placement::Entered,
        "a dispatch renews its place"
    );
    assert_eq!(
        window
            .enter(&acme, tier, placed[0], lease, 4, now, Entry::Refill)
            .await
            .expect("dynamodb"),
        Placement::Held,
        "a refill does not take a place someone holds"
    );

    // Parked dispatches come back oldest first (task ids are time-ordered), and leave answers
    // the places still taken and the mark of the latest park.
    let parked: Vec<DispatchMessage> = (0..3)
        .map(|_| DispatchMessage {
            task_id: TaskId::generate(),
            agency_id: acme.clone(),
            dispatch_id: "d1".into(),
            priority: tier,
            enqueued_at: now,
        })
        .collect();
    for message in parked.iter().rev() {
        window.park(message).await.expect("parked");
    }
    window.park(&parked[1]).await.expect("parked twice is one");
    let oldest = window.parked(&acme, tier, 2).await.expect("query");
    assert_eq!(oldest, parked[..2]);
    let state = window.leave(&acme, tier, placed[1]).await.expect("leave");
    assert_eq!(state.taken, 3);
    let mark = state.parked_mark.expect("marked");
    assert_eq!(
        window
            .leave(&acme, tier, placed[1])
            .await
            .expect("again")
            .taken,
        3,
        "leaving twice frees one place"
    );
    // A refill that found nothing clears its mark, unless a park wrote a new one since.
    window.park(&parked[2]).await.expect("parked again");
    window
        .clear_parked_mark(&acme, tier, &mark)
        .await
        .expect("stale mark");
    let state = window.leave(&acme, tier, placed[2]).await.expect("leave");
    let latest = state.parked_mark.expect("the later park's mark stays");
    assert_ne!(latest, mark);
    window
        .clear_parked_mark(&acme, tier, &latest)
        .await
        .expect("cleared");
    for message in &parked {
        window
            .unpark(&acme, tier, message.task_id)
            .await
            .expect("unparked");
    }
    assert!(window
        .parked(&acme, tier, 10)
        .await
        .expect("query")
        .is_empty());
    let state = window.leave(&acme, tier, placed[3]).await.expect("leave");
    assert_eq!((state.taken, state.parked_mark), (1, None));
    // Places whose lease ended are reclaimed by the next dispatch that finds the window full.
    for task in [newcomer, TaskId::generate(), TaskId::generate()] {
        assert_eq!(
            window
                .enter(&acme, tier, task, lease, 4, now, Entry::Refill)
                .await
                .expect("dynamodb"),
            Placement::Entered
        );
    }
    let after = lease + chrono::Duration::seconds(1);
    assert_eq!(
        window
            .enter(
                &acme,
                tier,
                TaskId::generate(),
                after,
                4,
                after,
                Entry::Refill
            )
            .await
            .expect("reclaimed"),
        Placement::Entered
    );
    // Leaving a window never used is a no-op.
    let state = window
        .leave(&acme, Priority::Background, newcomer)
        .await
        .expect("no window");
    assert_eq!(state, shared::ports::WindowState::default());
}

/// End to end on a stack of its own (normal tier cap 3, window 4): agency A floods the normal
/// tier with runs held open, and only a window of them is in the queue (the rest parked);
/// agency B's tasks behind them still start and finish while A's backlog waits; A's held runs
/// are then killed by the worker's Timeout (a crash between taking a slot and giving it back);
/// everything completes, each deferral cost no attempt, and no slot, place or parked run is
/// left.
#[tokio::test]
async fn a_flooding_agency_cannot_starve_another_and_a_killed_worker_leaks_no_slot() {
    use integration_tests::{isolated_options, unique_agency, wait_for_status, Client, Ledger};
    use serde_json::json;
    use shared::ports::{DispatchWindow, InFlightSlots};
    if !matches!(
        isolated_options("x").functions,
        local_stack::FunctionHost::Processes { .. }
    ) {
        println!("SKIPPED: needs the functions as processes (TASKFLOW_FUNCTIONS=in-process)");
        return;
    }
    let mut options = isolated_options("taskflow-fair-share");
    options.parameter_overrides.extend(
        [
            ("LeaseSeconds", "40"),
            ("WorkerTimeoutSeconds", "8"),
            ("QueueVisibilitySeconds", "22"),
            ("AgencyInFlightCaps", "5,5,3,5,5"),
            ("AgencyDispatchWindows", "10,10,4,10,10"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let host = local_stack::LocalStack::start(options).await.expect("host");
    let (flood, calm) = (unique_agency("flood"), unique_agency("calm"));
    let a = Client::as_user(&flood, "boss", "manager").at(&host.api_url());
    let b = Client::as_user(&calm, "boss", "manager").at(&host.api_url());
    let (held, quick) = (Ledger::start(), Ledger::start());
    held.hold();
    let task = |n: usize, url: &str| {
        json!({"title": format!("t{n}"), "priority": "normal", "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": url, "timeoutSeconds": 30}}})
    };
    // B has worked on the tier lately, so A's cap binds from its first run.
    let first = b.create_task(&task(0, &quick.url)).await;
    wait_for_status(&b, &first, &["completed"]).await;

    let mut flood_ids = Vec::new();
    for n in 0..12 {
        flood_ids.push(a.create_task(&task(n, &held.url)).await);
    }
    held.wait_for("A's runs up to its cap", 3, |_| true).await;
    // A's 12: 3 running (its cap, held), 4 in the queue (its window), the other 5 parked.
    let clients =
        shared::aws::AwsClients::new(&local_stack::emulator::sdk_config_for(&host.endpoints).await);
    let table = integration_tests::worker_config(&host).table_name;
    let window = shared::store::dynamo::DynamoDispatchWindow::new(clients.dynamodb.clone(), &table);
    let flood_agency = AgencyId::parse(&flood).expect("valid");
    let parked = integration_tests::eventually(
        "A's runs past its window to be parked",
        Duration::from_secs(30),
        || async {
            let parked = window
                .parked(&flood_agency, Priority::Normal, 100)
                .await
                .expect("query")
                .len();
            let started: std::collections::BTreeSet<String> =
                held.runs().into_iter().map(|r| r.task_id).collect();
            (parked + 4 + started.len() == 12).then_some(parked)
        },
    )
    .await;
    assert!(parked >= 5, "{parked} parked");
    let mut calm_ids = Vec::new();
    for n in 1..=4 {
        calm_ids.push(b.create_task(&task(n, &quick.url)).await);
    }
    for id in &calm_ids {
        let done = wait_for_status(&b, id, &["completed", "failed"]).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    // B finished while A's backlog waited: A never ran more than its cap of tasks.
    let started: std::collections::BTreeSet<String> =
        held.runs().into_iter().map(|r| r.task_id).collect();
    assert!(
        started.len() <= 3,
        "A started {} tasks: {started:?}",
        started.len()
    );

    // A's held runs are cut by the worker's Timeout (8 s): killed between taking their slots
    // and giving them back. Then every later run goes through.
    let worker = host.function_runtime("WorkerFunction").expect("processes");
    integration_tests::eventually(
        "the worker's Timeout to kill a held run",
        Duration::from_secs(60),
        || async { (worker.stats().timeouts >= 1).then_some(()) },
    )
    .await;
    held.release();
    for id in &flood_ids {
        let done = wait_for_status(&a, id, &["completed", "failed"]).await;
        assert_eq!(done["status"], "completed", "{done}");
        // A deferral is no attempt: each attempt is a run the receiver saw.
        assert_eq!(
            done["attempts"].as_u64(),
            Some(held.runs_of(id).len() as u64),
            "{done}"
        );
    }
    // No slot or place is left taken, live or expired, and nothing is parked. (A run gives
    // its slot back just after its outcome is written: poll for it.)
    let slots = shared::store::dynamo::DynamoInFlightSlots::new(clients.dynamodb.clone(), &table);
    for agency in [&flood, &calm] {
        let agency = AgencyId::parse(agency).expect("valid");
        integration_tests::eventually(
            &format!("{agency} to give every slot back"),
            Duration::from_secs(20),
            || async {
                let left = slots
                    .held(&agency, Priority::Normal, chrono::DateTime::UNIX_EPOCH)
                    .await
                    .expect("read");
                (left == 0).then_some(())
            },
        )
        .await;
        let parked = window
            .parked(&agency, Priority::Normal, 100)
            .await
            .expect("query");
        assert!(parked.is_empty(), "{agency} has parked runs: {parked:?}");
        let probe = window
            .enter(
                &agency,
                Priority::Normal,
                TaskId::generate(),
                chrono::Utc::now(),
                1,
                chrono::DateTime::UNIX_EPOCH,
                shared::ports::Entry::Dispatch,
            )
            .await
            .expect("dynamodb");
        assert_eq!(
            probe,
            shared::ports::Placement::Entered,
            "{agency} still holds places in its window"
        );
    }
    host.stop().await;
}

/// `FairShare=sqs-fair-queues` leaves fairness to SQS (the messages' MessageGroupId): a task
/// runs to completion and nothing of the table's fair share is written for its agency (with
/// the default, its run enters a window item and takes a slot: the tests above).
#[tokio::test]
async fn with_sqs_fair_queues_no_window_or_slot_is_written() {
    use integration_tests::{isolated_options, unique_agency, wait_for_status, Client};
    let mut options = isolated_options("taskflow-fair-queues");
    options
        .parameter_overrides
        .push(("FairShare".to_owned(), "sqs-fair-queues".to_owned()));
    let host = local_stack::LocalStack::start(options).await.expect("host");
    let agency = unique_agency("fair-queues");
    let boss = Client::as_user(&agency, "boss", "manager").at(&host.api_url());
    let id = boss
        .create_task(
            &serde_json::json!({"title": "t", "priority": "normal", "autoDispatch": true,
            "executor": {"type": "echo"}}),
        )
        .await;
    let done = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");

    let clients =
        shared::aws::AwsClients::new(&local_stack::emulator::sdk_config_for(&host.endpoints).await);
    let table = integration_tests::worker_config(&host).table_name;
    for (pk, sk) in [
        (format!("AGENCY#{agency}#QUEUED#normal"), "WINDOW"),
        (format!("AGENCY#{agency}#QUOTA"), "IN_FLIGHT#normal"),
    ] {
        let item = clients
            .dynamodb
            .get_item()
            .table_name(&table)
            .key("PK", aws_sdk_dynamodb::types::AttributeValue::S(pk.clone()))
            .key(
                "SK",
                aws_sdk_dynamodb::types::AttributeValue::S(sk.to_owned()),
            )
            .consistent_read(true)
            .send()
            .await
            .expect("get");
        assert!(item.item.is_none(), "{pk} {sk}: {:?}", item.item);
    }
    host.stop().await;
}
