//! Every size limit the API enforces, in one place so docs and code agree.

/// Largest accepted request body (API Gateway itself allows 10 MB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Serialized JSON size of a task's metadata object.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
pub const MAX_METADATA_KEYS: usize = 100;
/// Serialized JSON size of a result stored on the task itself.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
pub const MAX_ERROR_CHARS: usize = 4_000;
pub const MAX_ID_CHARS: usize = 128;
pub const MAX_STEPS: usize = 100;
pub const MAX_STEP_NAME_CHARS: usize = 100;
pub const MAX_ATTACHMENTS: usize = 50;
pub const MAX_FILE_NAME_CHARS: usize = 255;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 100;
/// Most bytes of serialized items one page of a list holds; a page ends early (with a cursor)
/// rather than pass it. Lambda refuses a response over 6 MB, measured on the API Gateway proxy
/// response, whose body is a JSON string: escaping can double the body (each `"` and `\`
/// gains a `\`), so pages stay under 2 MiB. One task is at most about 0.5 MB.
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// What one item adds to a page: its serialized size and a separating comma.
pub fn page_item_bytes<T: serde::Serialize>(item: &T) -> usize {
    serde_json::to_vec(item).map_or(MAX_PAGE_BYTES, |json| json.len()) + 1
}

/// How many of `items` a page holds: as many as fit in [`MAX_PAGE_BYTES`], and always one.
pub fn items_within_budget<T: serde::Serialize>(items: &[T]) -> usize {
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        bytes += page_item_bytes(item);
        if i > 0 && bytes > MAX_PAGE_BYTES {
            return i;
        }
    }
    items.len()
}
/// Most runs a task may ask for (queues' maxReceiveCount must stay above this).
pub const MAX_ATTEMPTS: u32 = 10;
pub const MAX_BASE_DELAY_SECONDS: u32 = 900;
/// Serialized JSON size of a task's executor input.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
pub const MAX_CAPABILITIES: usize = 20;
pub const MAX_AGENT_CAPACITY: u32 = 1_000;
