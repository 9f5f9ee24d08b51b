use integration_tests::{unique_agency, Client};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashSet;

#[tokio::test]
async fn pages_through_250_tasks_newest_first_with_filters() {
    let agency = unique_agency("page");
    let boss = Client::as_user(&agency, "boss", "manager");
    let mut created = Vec::new();
    // Created in parallel batches to keep the emulator busy but not swamped.
    for chunk in 0..25 {
        let batch: Vec<_> = (0..10)
            .map(|i| {
                let boss = boss.clone();
                let n = chunk * 10 + i;
                let priority = if n % 5 == 0 { "critical" } else { "normal" };
                tokio::spawn(async move {
                    boss.create_task_retrying(
                        &json!({"title": format!("task {n}"), "priority": priority}),
                    )
                    .await
                })
            })
            .collect();
        for task in batch {
            created.push(task.await.unwrap());
        }
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/tasks?limit=100&cursor={c}"),
            None => "/api/tasks?limit=100".to_owned(),
        };
        let page = boss.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        pages += 1;
        seen.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned()),
        );
        match page.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages <= 4, "paging does not terminate");
    }
    assert_eq!(seen.len(), 250);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        250,
        "no task twice"
    );
    let mut newest_first = created.clone();
    newest_first.sort();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    // A filtered page still fills up across sparse matches.
    let critical = boss.get("/api/tasks?priority=critical&limit=20").await;
    let items = critical.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    assert!(items.iter().all(|t| t["priority"] == "critical"));

    // A cursor is bound to its own agency and index.
    let other = Client::as_user(&unique_agency("page-other"), "boss", "manager");
    let first = boss.get("/api/tasks?limit=5").await;
    let stolen = first.body["nextCursor"].as_str().unwrap();
    let reply = other.get(&format!("/api/tasks?cursor={stolen}")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body["error"]["fields"]["cursor"].is_string());
}
