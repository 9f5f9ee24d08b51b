use integration_tests::{stack, unique_agency, Client};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn presigned_upload_lands_in_s3_and_is_listed_on_the_task() {
    let agency = unique_agency("att");
    let boss = Client::as_user(&agency, "boss", "manager");
    let id = boss.create_task(&json!({"title": "With files"})).await;

    let reply = boss
        .post(
            &format!("/api/tasks/{id}/attachments"),
            &json!({"fileName": "notes.txt", "contentType": "text/plain"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let url = reply.body["upload"]["url"].as_str().unwrap();
    assert_eq!(reply.body["upload"]["method"], "PUT");
    assert!(url.contains("X-Amz-Expires=900"), "{url}");
    let key = reply.body["attachment"]["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("attachments/{agency}/{id}/")));

    let upload = reqwest::Client::new()
        .put(url)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert!(
        upload.status().is_success(),
        "upload failed: {}",
        upload.status()
    );

    let clients = stack().clients().await;
    let bucket = reqwest::Url::parse(url)
        .unwrap()
        .path_segments()
        .unwrap()
        .next()
        .unwrap()
        .to_owned();
    let object = clients
        .s3
        .get_object()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .expect("object uploaded");
    let bytes = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(&bytes[..], b"hello");

    let task = boss.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(task.body["attachments"][0]["fileName"], "notes.txt");
    assert_eq!(task.body["attachments"][0]["key"], key.as_str());
}
