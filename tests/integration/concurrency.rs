use integration_tests::{unique_agency, Client};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn concurrent_updates_one_wins_the_other_gets_409() {
    let agency = unique_agency("race");
    let boss = Client::as_user(&agency, "boss", "manager");
    let id = boss.create_task(&json!({"title": "Contended"})).await;
    let path = format!("/api/tasks/{id}");

    let writers: Vec<_> = ["first", "second"]
        .into_iter()
        .map(|title| {
            let (boss, path) = (boss.clone(), path.clone());
            tokio::spawn(async move {
                boss.send(
                    Method::PUT,
                    &path,
                    Some(&json!({"title": title})),
                    &[("if-match", "\"1\"")],
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut winner = None;
    for writer in writers {
        let reply = writer.await.unwrap();
        if reply.status == StatusCode::OK {
            winner = reply.body["title"].as_str().map(str::to_owned);
        } else {
            assert_eq!(reply.error_code(), "version_conflict", "{}", reply.body);
            assert_eq!(reply.body["error"]["fields"]["currentVersion"], 2);
        }
        statuses.push(reply.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let stored = boss.get(&path).await;
    assert_eq!(stored.body["title"].as_str(), winner.as_deref());
    assert_eq!(stored.body["version"], 2);
}

#[tokio::test]
async fn without_if_match_a_racing_transition_is_still_never_lost() {
    let agency = unique_agency("race2");
    let boss = Client::as_user(&agency, "boss", "manager");
    let id = boss.create_task(&json!({"title": "Assign me"})).await;
    let racers: Vec<_> = ["u1", "u2", "u3"]
        .into_iter()
        .map(|user| {
            let (boss, id) = (boss.clone(), id.clone());
            tokio::spawn(async move {
                boss.post(
                    &format!("/api/tasks/{id}/assign"),
                    &json!({"assignee": user}),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for racer in racers {
        let reply = racer.await.unwrap();
        match reply.status.as_u16() {
            200 => ok += 1,
            409 => assert_eq!(reply.error_code(), "version_conflict"),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    let stored = boss.get(&format!("/api/tasks/{id}")).await;
    // Every successful write bumped the version exactly once.
    assert_eq!(stored.body["version"], 1 + ok);
}
