//! The preparer against the in-memory ports: deadlines, resuming, limits.

use super::Prepared;
use crate::domain::{AgencyId, BatchStatus, Caller, ManifestEntry, Preparation, Role, UserId};
use crate::ports::{BatchStore, ObjectStore};
use crate::testing::MemoryWorld;
use serde_json::json;
use std::time::Instant;

fn boss() -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role: Role::Manager,
    }
}

fn chunk_key(id: crate::domain::TaskId, chunk: u32) -> String {
    format!("batches/a1/{id}/round-000/chunks/{chunk:05}.json")
}

async fn manifest(world: &MemoryWorld, id: crate::domain::TaskId) -> Vec<ManifestEntry> {
    let key = format!("batches/a1/{id}/round-000/manifest.json");
    serde_json::from_slice(&world.objects.get(&key, usize::MAX).await.unwrap()).unwrap()
}

/// Puts `body` under `uploads/a1/<name>` with `metadata` (the agency made known first), lets
/// the trigger record its batch, and runs its preparation; answers the batch and how it went.
async fn prepare_upload(
    world: &MemoryWorld,
    name: &str,
    body: Vec<u8>,
    metadata: &[(&str, &str)],
) -> (crate::domain::TaskId, Prepared) {
    world
        .services()
        .tasks
        .create(&boss(), &json!({"title": "the agency exists"}), None)
        .await
        .unwrap();
    let key = format!("uploads/a1/{name}");
    world
        .objects
        .put(&key, body, "application/octet-stream")
        .await
        .unwrap();
    for (name, value) in metadata {
        let mut objects = world.objects.objects.lock().unwrap();
        let (_, stored) = objects.get_mut(&key).unwrap();
        stored.insert((*name).into(), (*value).into());
    }
    let id = world
        .services()
        .batches
        .create_from_upload(&key, "v1")
        .await
        .unwrap()
        .unwrap();
    let outcome = world
        .run_preparations(&world.services().batch_preparer)
        .await
        .pop()
        .unwrap()
        .unwrap();
    (id, outcome)
}

/// Out of time on every pass: each pass saves at least one new chunk, queues its own
/// continuation, and no chunk is ever written twice.
#[tokio::test]
async fn a_preparation_out_of_time_goes_on_in_new_passes_writing_each_chunk_once() {
    let world = MemoryWorld::new();
    let items: Vec<u64> = (0..40).collect();
    let id = world
        .services()
        .batches
        .create(&boss(), &json!({"items": items, "itemsPerBatch": 3}))
        .await
        .unwrap()
        .batch
        .id;
    let outcomes = world
        .run_preparations_until(&world.services().batch_preparer, Instant::now)
        .await;
    let outcomes: Vec<Prepared> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(outcomes.last(), Some(&Prepared::Started));
    let continued = outcomes
        .iter()
        .filter(|o| **o == Prepared::Continued)
        .count();
    assert!(continued >= 1, "{outcomes:?}");
    assert_eq!(continued + 1, outcomes.len(), "{outcomes:?}");
    for chunk in 0..14 {
        assert_eq!(
            world.objects.puts_of(&chunk_key(id, chunk)),
            1,
            "chunk {chunk}"
        );
    }
    let entries = manifest(&world, id).await;
    assert_eq!(entries.len(), 14);
    assert_eq!((entries[13].first, entries[13].count), (39, 1));
    let batch = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (batch.status, batch.total_items),
        (BatchStatus::Processing, 40)
    );
}

/// A preparation killed after saving its progress: the next delivery writes only the chunks
/// after the saved ones.
#[tokio::test]
async fn a_killed_preparation_resumes_after_its_saved_chunks() {
    let world = MemoryWorld::new();
    let items: Vec<u64> = (0..10).collect();
    let id = world
        .services()
        .batches
        .create(&boss(), &json!({"items": items, "itemsPerBatch": 2}))
        .await
        .unwrap()
        .batch
        .id;
    // What the killed pass left: chunks 0–2 written, and saved as written.
    let mut batch = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    for chunk in 0..3u64 {
        let body = json!([{"index": chunk * 2, "item": chunk * 2}, {"index": chunk * 2 + 1, "item": chunk * 2 + 1}]);
        world
            .objects
            .put(
                &chunk_key(id, chunk as u32),
                body.to_string().into_bytes(),
                "application/json",
            )
            .await
            .unwrap();
    }
    batch.preparation = Some(Preparation {
        chunks_written: 3,
        items_read: 6,
        passes: 0,
        repairs: 0,
        updated_at: chrono::Utc::now(),
    });
    world.batches.put(&batch).await.unwrap();

    let outcome = world
        .run_preparations(&world.services().batch_preparer)
        .await;
    assert_eq!(
        outcome.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [Prepared::Started]
    );
    for chunk in 0..5 {
        assert_eq!(
            world.objects.puts_of(&chunk_key(id, chunk)),
            1,
            "chunk {chunk}"
        );
    }
    assert_eq!(manifest(&world, id).await.len(), 5);
}

/// A round may have at most `MAX_CHUNKS` chunks; past it the batch fails saying what
/// `itemsPerBatch` would fit.
#[tokio::test]
async fn an_upload_needing_too_many_chunks_fails_naming_the_chunk_size_to_use() {
    let world = MemoryWorld::new();
    let lines = super::MAX_CHUNKS as usize + 1;
    let (id, outcome) = prepare_upload(
        &world,
        "many.jsonl",
        b"1\n".repeat(lines),
        &[("items-per-batch", "1")],
    )
    .await;
    let Prepared::Failed(reason) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        reason,
        "the batch needs more than 100000 chunks of 1 items; set itemsPerBatch to at least 2"
    );
    let batch = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
    assert!(world.orchestrator.started.lock().unwrap().is_empty());
}

/// An upload's items are counted toward the daily quota when its preparation ends (only then
/// is their number known): over it, the batch fails naming the quota and nothing starts.
#[tokio::test]
async fn an_upload_over_the_daily_item_quota_fails_when_prepared() {
    let world = MemoryWorld::new();
    *world.batches.daily_item_limit.lock().unwrap() = Some(2);
    let (id, outcome) = prepare_upload(&world, "three.json", b"[1, 2, 3]".to_vec(), &[]).await;
    assert!(
        matches!(&outcome, Prepared::Failed(reason) if reason.contains("batch items")),
        "{outcome:?}"
    );
    let batch = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
    assert!(world.orchestrator.started.lock().unwrap().is_empty());
    assert!(
        world
            .batches
            .daily_items
            .lock()
            .unwrap()
            .values()
            .all(|n| *n == 0),
        "nothing counted"
    );
}

/// An input stream that stops delivering (a stalled S3 read) after some chunks are saved: the
/// pass stops at its deadline and queues its continuation, instead of waiting into its Timeout.
#[tokio::test]
async fn a_stalled_read_stops_the_pass_at_its_deadline() {
    struct Stalling(std::sync::Arc<crate::testing::MemoryObjects>);

    #[async_trait::async_trait]
    impl ObjectStore for Stalling {
        fn bucket(&self) -> &str {
            self.0.bucket()
        }
        async fn put(&self, key: &str, body: Vec<u8>, kind: &str) -> Result<(), crate::AppError> {
            self.0.put(key, body, kind).await
        }
        async fn get(&self, key: &str, max: usize) -> Result<Vec<u8>, crate::AppError> {
            self.0.get(key, max).await
        }
        /// The whole object, then nothing: the stream never ends.
        async fn open(
            &self,
            key: &str,
            max: u64,
        ) -> Result<crate::ports::ObjectBody, crate::AppError> {
            use futures::StreamExt;
            let body = self.0.open(key, max).await?;
            Ok(crate::ports::ObjectBody {
                size: body.size,
                chunks: Box::pin(body.chunks.chain(futures::stream::pending())),
            })
        }
        async fn size(&self, key: &str) -> Result<Option<u64>, crate::AppError> {
            self.0.size(key).await
        }
        async fn metadata(
            &self,
            key: &str,
        ) -> Result<std::collections::HashMap<String, String>, crate::AppError> {
            self.0.metadata(key).await
        }
        async fn presign_get(
            &self,
            key: &str,
            ttl: std::time::Duration,
        ) -> Result<String, crate::AppError> {
            self.0.presign_get(key, ttl).await
        }
        async fn presign_put(
            &self,
            key: &str,
            kind: &str,
            ttl: std::time::Duration,
        ) -> Result<String, crate::AppError> {
            self.0.presign_put(key, kind, ttl).await
        }
    }

    let world = MemoryWorld::new();
    let id = world
        .services()
        .batches
        .create(&boss(), &json!({"items": [1, 2, 3], "itemsPerBatch": 1}))
        .await
        .unwrap()
        .batch
        .id;
    let mut preparer = world.services().batch_preparer;
    preparer.objects = std::sync::Arc::new(Stalling(world.objects.clone()));
    let request = world.preparations.take().pop().unwrap();
    let stop_at = Instant::now() + std::time::Duration::from_millis(300);
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        preparer.prepare(&request, stop_at),
    )
    .await
    .expect("the pass stops at its deadline")
    .unwrap();
    assert_eq!(outcome, Prepared::Continued);
    assert_eq!(world.preparations.take(), [request], "its continuation");
    let batch = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Pending);
    assert_eq!(batch.preparation.map(|p| p.chunks_written), Some(3));
}
