//! Chunks written as items arrive: a bounded number of PUTs in flight at once, the prefix of
//! chunks known to be written tracked for the checkpoint, and chunks below a resume point
//! counted without being written again.

use crate::domain::{ChunkItem, ManifestEntry};
use crate::error::AppError;
use crate::ports::ObjectStore;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::task::JoinSet;

/// PUTs in flight at once. At ~30 ms each that is ~1,000 chunks/s, under S3's 3,500 PUTs/s
/// per prefix, and memory stays at this many chunks (each at most the 64 MiB input).
pub const WRITES_IN_FLIGHT: usize = 32;

/// The most chunks one round may have. The manifest lists every chunk (~100 bytes each), and
/// the preparer builds it in memory: 100,000 chunks is a ~10 MB manifest.
pub const MAX_CHUNKS: u32 = 100_000;

pub struct ChunkWriter {
    objects: Arc<dyn ObjectStore>,
    /// `batches/<agency>/<batch>/round-RRR`
    prefix: String,
    per_chunk: usize,
    /// Chunks below this index were written by an earlier pass: counted, not written.
    resume_at: u32,
    current: Vec<ChunkItem>,
    /// (first item index, item count) of every chunk so far, in order.
    chunks: Vec<(u64, u32)>,
    writes: JoinSet<Result<u32, AppError>>,
    /// Written chunks past the prefix (they finish out of order).
    finished: BTreeSet<u32>,
    written_prefix: u32,
}

impl ChunkWriter {
    pub fn new(
        objects: Arc<dyn ObjectStore>,
        prefix: String,
        per_chunk: u32,
        resume_at: u32,
    ) -> Self {
        Self {
            objects,
            prefix,
            per_chunk: per_chunk.max(1) as usize,
            resume_at,
            current: Vec::new(),
            chunks: Vec::new(),
            writes: JoinSet::new(),
            finished: BTreeSet::new(),
            written_prefix: 0,
        }
    }

    pub fn chunk_key(prefix: &str, index: u32) -> String {
        format!("{prefix}/chunks/{index:05}.json")
    }

    /// Chunks 0 to `written_prefix() - 1` are in S3 (or were before this pass).
    pub fn written_prefix(&self) -> u32 {
        self.written_prefix
    }

    /// Chunks full and handed to a write (or written by an earlier pass): once writes drain,
    /// the written prefix reaches this.
    pub fn closed_chunks(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// Chunks begun so far, the one filling included.
    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32 + u32::from(!self.current.is_empty())
    }

    pub async fn push(&mut self, item: ChunkItem) -> Result<(), AppError> {
        self.current.push(item);
        if self.current.len() >= self.per_chunk {
            self.close_chunk().await?;
        }
        Ok(())
    }

    async fn close_chunk(&mut self) -> Result<(), AppError> {
        let items = std::mem::take(&mut self.current);
        let Some(first) = items.first().map(|i| i.index) else {
            return Ok(());
        };
        let index = self.chunks.len() as u32;
        self.chunks.push((first, items.len() as u32));
        if index < self.resume_at {
            self.finished.insert(index);
            self.advance();
            return Ok(());
        }
        while self.writes.len() >= WRITES_IN_FLIGHT {
            self.reap_one().await?;
        }
        let body = serde_json::to_vec(&items).map_err(AppError::internal)?;
        let (objects, key) = (self.objects.clone(), Self::chunk_key(&self.prefix, index));
        self.writes.spawn(async move {
            objects.put(&key, body, "application/json").await?;
            Ok(index)
        });
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<(), AppError> {
        if let Some(joined) = self.writes.join_next().await {
            let index = joined.map_err(AppError::internal)??;
            self.finished.insert(index);
            self.advance();
        }
        Ok(())
    }

    /// Takes in writes that have finished, without waiting.
    pub fn reap_finished(&mut self) -> Result<(), AppError> {
        while let Some(joined) = self.writes.try_join_next() {
            let index = joined.map_err(AppError::internal)??;
            self.finished.insert(index);
        }
        self.advance();
        Ok(())
    }

    fn advance(&mut self) {
        while self.finished.remove(&self.written_prefix) {
            self.written_prefix += 1;
        }
    }

    /// Waits for every write begun; the chunk still filling stays unwritten.
    pub async fn drain(&mut self) -> Result<(), AppError> {
        while !self.writes.is_empty() {
            self.reap_one().await?;
        }
        Ok(())
    }

    /// Writes the last (partial) chunk, waits for every write, and answers the manifest.
    pub async fn finish(mut self) -> Result<Vec<ManifestEntry>, AppError> {
        self.close_chunk().await?;
        self.drain().await?;
        Ok(self
            .chunks
            .iter()
            .enumerate()
            .map(|(index, &(first, count))| ManifestEntry {
                key: Self::chunk_key(&self.prefix, index as u32),
                index: index as u32,
                first,
                count,
            })
            .collect())
    }
}
