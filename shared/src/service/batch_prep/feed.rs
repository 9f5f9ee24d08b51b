//! Where a round's items come from, produced in the background into a bounded channel: the
//! input file streamed from S3 and parsed as it arrives (round 0), or the failed items of the
//! last round, read a page of failures and a chunk at a time (a retry round). Either way the
//! preparer holds a bounded number of items, never the whole round.

use crate::domain::batch_input::{read_items, InputFormat, MAX_INPUT_BYTES};
use crate::domain::{AgencyId, ChunkItem, TaskId};
use crate::error::AppError;
use crate::ports::{BatchStore, ObjectStore};
use futures::StreamExt;
use std::io::Read;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Items waiting between the reader and the chunk writer.
const ITEMS_BUFFERED: usize = 1_024;
/// Failures read per page in a retry round.
const FAILURES_PAGE: usize = 1_000;

/// Why a feed ended early.
#[derive(Debug)]
pub enum FeedError {
    /// The input itself is wrong (malformed, too big, missing): the batch fails with this.
    Input(String),
    /// Reading failed on the way (S3 or DynamoDB): the preparation is tried again.
    Transport(AppError),
}

pub struct ItemFeed {
    pub items: mpsc::Receiver<ChunkItem>,
    /// How many items the feed produced in all, once it has ended.
    pub done: JoinHandle<Result<u64, FeedError>>,
}

/// The input file at `key`, parsed as it streams in.
pub async fn from_file(
    objects: &dyn ObjectStore,
    key: &str,
    format: InputFormat,
) -> Result<ItemFeed, FeedError> {
    let body = match objects.open(key, MAX_INPUT_BYTES as u64).await {
        Ok(body) => body,
        Err(AppError::NotFound { .. }) => {
            return Err(FeedError::Input(format!(
                "{key}: nothing was uploaded at this key"
            )))
        }
        Err(AppError::Conflict(problem)) => return Err(FeedError::Input(problem)),
        Err(err) => return Err(FeedError::Transport(err)),
    };
    let (bytes_tx, bytes_rx) = mpsc::channel::<Result<Vec<u8>, AppError>>(8);
    let (items_tx, items) = mpsc::channel(ITEMS_BUFFERED);
    let mut pieces = body.chunks;
    tokio::spawn(async move {
        while let Some(piece) = pieces.next().await {
            let failed = piece.is_err();
            if bytes_tx.send(piece).await.is_err() || failed {
                break;
            }
        }
    });
    // The parser is synchronous: it runs on a blocking thread and reads from the channel.
    let done = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            pieces: bytes_rx,
            current: Vec::new(),
            at: 0,
            failed: None,
        };
        let mut index = 0u64;
        let result = read_items(&mut reader, format, |item| {
            let sent = items_tx.blocking_send(ChunkItem { index, item }).is_ok();
            index += 1;
            sent
        });
        match (result, reader.failed.take()) {
            (_, Some(err)) => Err(FeedError::Transport(err)),
            (Ok(count), None) => Ok(count),
            (Err(problem), None) => Err(FeedError::Input(problem)),
        }
    });
    Ok(ItemFeed { items, done })
}

/// The items that failed in the batch's last round, in index order, read back from the
/// round-0 chunks (`round0_prefix`), whose chunk `n` holds items `n × per_chunk` onwards.
pub fn from_failures(
    batches: Arc<dyn BatchStore>,
    objects: Arc<dyn ObjectStore>,
    agency: AgencyId,
    id: TaskId,
    round0_prefix: String,
    per_chunk: u32,
) -> ItemFeed {
    let (items_tx, items) = mpsc::channel(ITEMS_BUFFERED);
    let done = tokio::spawn(async move {
        let per_chunk = u64::from(per_chunk.max(1));
        let mut loaded: Option<(u64, Vec<ChunkItem>)> = None;
        let mut cursor: Option<String> = None;
        let mut count = 0u64;
        loop {
            let page = batches
                .failures(&agency, id, cursor.as_deref(), FAILURES_PAGE)
                .await
                .map_err(FeedError::Transport)?;
            for failure in page.items {
                let chunk = failure.index / per_chunk;
                if loaded.as_ref().map(|(n, _)| *n) != Some(chunk) {
                    let key = super::chunks::ChunkWriter::chunk_key(&round0_prefix, chunk as u32);
                    let bytes = objects
                        .get(&key, MAX_INPUT_BYTES)
                        .await
                        .map_err(FeedError::Transport)?;
                    let items: Vec<ChunkItem> = serde_json::from_slice(&bytes)
                        .map_err(|e| FeedError::Transport(AppError::internal(e)))?;
                    loaded = Some((chunk, items));
                }
                // Round-0 chunks hold consecutive items: the failure's place is its offset.
                let position = (failure.index - chunk * per_chunk) as usize;
                let item = loaded
                    .as_ref()
                    .and_then(|(_, items)| items.get(position))
                    .filter(|item| item.index == failure.index)
                    .cloned()
                    .ok_or_else(|| {
                        FeedError::Transport(AppError::internal(format!(
                            "failed item {} is not in its round-0 chunk {chunk}",
                            failure.index
                        )))
                    })?;
                if items_tx.send(item).await.is_err() {
                    return Ok(count);
                }
                count += 1;
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(count),
            }
        }
    });
    ItemFeed { items, done }
}

/// A `Read` over pieces arriving on a channel, for the synchronous parser. A transport error
/// ends the read and is kept, so it is not mistaken for a problem of the file.
struct ChannelReader {
    pieces: mpsc::Receiver<Result<Vec<u8>, AppError>>,
    current: Vec<u8>,
    at: usize,
    failed: Option<AppError>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.current.len() {
            match self.pieces.blocking_recv() {
                None => return Ok(0),
                Some(Ok(piece)) => {
                    self.current = piece;
                    self.at = 0;
                }
                Some(Err(err)) => {
                    let message = err.to_string();
                    self.failed = Some(err);
                    return Err(std::io::Error::other(message));
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
