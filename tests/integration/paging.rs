use integration_tests::{unique_agency, wait_for_status, Client};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashSet;

#[tokio::test]
async fn pages_through_120_tasks_newest_first_with_filters() {
    let agency = unique_agency("page");
    let boss = Client::as_user(&agency, "boss", "manager");
    let mut created = Vec::new();
    // Created in parallel batches to keep the emulator busy but not swamped.
    for chunk in 0..12 {
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
            Some(c) => format!("/api/tasks?limit=50&cursor={c}"),
            None => "/api/tasks?limit=50".to_owned(),
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
    assert_eq!(seen.len(), 120);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        120,
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

/// Issue 13 item 10: a page of the largest tasks the API accepts used to pass Lambda's 6 MB
/// response limit (a 502). Pages now end at a byte budget with a cursor: every page is
/// answered, stays under the limit with room to spare, and paging still returns every task
/// exactly once.
#[tokio::test]
async fn pages_of_the_largest_tasks_stay_under_the_response_limit_and_miss_none() {
    use shared::domain::limits::{
        MAX_DESCRIPTION_CHARS, MAX_INPUT_BYTES, MAX_METADATA_BYTES, MAX_PAGE_BYTES, MAX_TITLE_CHARS,
    };
    // ~270 KB each once stored: 30 of them (~8 MB) would be one page over 6 MB.
    const TASKS: usize = 30;
    let agency = unique_agency("bigpage");
    let boss = Client::as_user(&agency, "boss", "manager");
    // Each at its limit, in the characters that serialize largest: `"` becomes `\"`, and a
    // control character `\u0001`, six bytes.
    let title = "\"".repeat(MAX_TITLE_CHARS);
    let description = "\u{1}".repeat(MAX_DESCRIPTION_CHARS);
    let metadata = json!({"m": "x".repeat(MAX_METADATA_BYTES - r#"{"m":""}"#.len())});
    // The echo executor answers with its input, so the result is at its 64 KiB limit too.
    let input = json!({"i": "y".repeat(MAX_INPUT_BYTES - r#"{"i":""}"#.len())});
    let body = json!({"title": title, "description": description, "metadata": metadata,
        "executor": {"type": "echo"}, "input": input, "autoDispatch": true});
    let mut created = HashSet::new();
    for _ in 0..TASKS {
        created.insert(boss.create_task_retrying(&body).await);
    }
    for id in &created {
        let task = wait_for_status(&boss, id, &["completed", "failed"]).await;
        assert_eq!(task["status"], "completed", "{}", task["error"]);
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut short_pages = 0;
    for _ in 0..TASKS {
        let path = match &cursor {
            Some(c) => format!("/api/tasks?limit=100&cursor={c}"),
            None => "/api/tasks?limit=100".to_owned(),
        };
        let page = boss.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.error_code());
        let body = serde_json::to_string(&page.body).unwrap();
        // The proxy response carries the body as a JSON string: its escaped size is what
        // Lambda measures against 6 MB.
        let proxied = serde_json::to_string(&body).unwrap().len();
        assert!(body.len() <= MAX_PAGE_BYTES + 1024, "{} bytes", body.len());
        assert!(proxied < 6_000_000, "{proxied} bytes once escaped");
        let items = page.body["items"].as_array().unwrap();
        assert!(!items.is_empty());
        if items.len() < 100 && page.body["nextCursor"].is_string() {
            short_pages += 1;
        }
        seen.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(short_pages > 0, "the byte budget ended pages early");
    assert_eq!(seen.len(), TASKS, "every task once");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), created);
}

/// The agent list pages on DynamoDB too: its cursor resumes GSI1 after the last agent.
#[tokio::test]
async fn agents_page_by_cursor() {
    let agency = unique_agency("agentpage");
    let boss = Client::as_user(&agency, "boss", "manager");
    let mut registered = Vec::new();
    for i in 0..5 {
        let id = format!("bot-{i}");
        let agent = Client::as_user(&agency, &id, "agent");
        let reply = agent
            .put(&format!("/api/agents/{id}"), &json!({"capacity": 1}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        registered.push(id);
    }
    let mut seen = Vec::new();
    let mut path = "/api/agents?limit=2".to_owned();
    for _ in 0..5 {
        let page = boss.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        match page.body["nextCursor"].as_str() {
            Some(c) => path = format!("/api/agents?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, registered);
}
