//! Content-addressed task ids, computed exactly as dfdaemon computes them for
//! persistent cache tasks: hex SHA-256 over the content, then the tag, the
//! application and the decimal piece length (each only if set), then the
//! string `PERSISTENT_CACHE`; or hex SHA-256 of
//! `content_for_calculating_task_id` when that is given.

use sha2::{Digest, Sha256};

const PERSISTENT_CACHE_SUFFIX: &[u8] = b"PERSISTENT_CACHE";

/// What besides the content goes into a task id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskIdInputs {
    pub tag: Option<String>,
    pub application: Option<String>,
    /// Only a piece length the user asked for; a default one is not hashed.
    pub piece_length: Option<u64>,
    pub content_for_calculating_task_id: Option<String>,
}

/// Hashes content as it streams by; `finish` gives the task id.
pub struct TaskIdHasher {
    content: Sha256,
    inputs: TaskIdInputs,
}

impl TaskIdHasher {
    pub fn new(inputs: TaskIdInputs) -> Self {
        Self {
            content: Sha256::new(),
            inputs,
        }
    }

    /// Whether the content matters at all (it does not when the id comes
    /// from `content_for_calculating_task_id`).
    pub fn needs_content(&self) -> bool {
        self.inputs.content_for_calculating_task_id.is_none()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        if self.needs_content() {
            self.content.update(chunk);
        }
    }

    pub fn finish(self) -> String {
        if let Some(content) = &self.inputs.content_for_calculating_task_id {
            return hex::encode(Sha256::digest(content.as_bytes()));
        }
        let mut hasher = self.content;
        if let Some(tag) = non_empty(&self.inputs.tag) {
            hasher.update(tag.as_bytes());
        }
        if let Some(application) = non_empty(&self.inputs.application) {
            hasher.update(application.as_bytes());
        }
        if let Some(piece_length) = self.inputs.piece_length {
            hasher.update(piece_length.to_string().as_bytes());
        }
        hasher.update(PERSISTENT_CACHE_SUFFIX);
        hex::encode(hasher.finalize())
    }
}

/// dfdaemon treats an empty tag or application like an unset one.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// Whether `id` has the shape of a task id (64 lowercase hex digits).
pub fn is_task_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(content: &[u8], inputs: TaskIdInputs) -> String {
        let mut hasher = TaskIdHasher::new(inputs);
        // Split the content to check that streaming gives the same id.
        let (a, b) = content.split_at(content.len() / 2);
        hasher.update(a);
        hasher.update(b);
        hasher.finish()
    }

    #[test]
    fn plain_content_is_content_then_suffix() {
        let expected = hex::encode(Sha256::digest(b"helloPERSISTENT_CACHE"));
        assert_eq!(id_of(b"hello", TaskIdInputs::default()), expected);
    }

    #[test]
    fn tag_application_and_piece_length_are_appended_in_order() {
        let inputs = TaskIdInputs {
            tag: Some("t".into()),
            application: Some("app".into()),
            piece_length: Some(4194304),
            content_for_calculating_task_id: None,
        };
        let expected = hex::encode(Sha256::digest(b"hellotapp4194304PERSISTENT_CACHE"));
        assert_eq!(id_of(b"hello", inputs), expected);
    }

    #[test]
    fn content_for_calculating_task_id_replaces_everything() {
        let inputs = TaskIdInputs {
            tag: Some("t".into()),
            content_for_calculating_task_id: Some("my-id".into()),
            ..Default::default()
        };
        assert_eq!(
            id_of(b"ignored", inputs),
            hex::encode(Sha256::digest(b"my-id"))
        );
    }

    #[test]
    fn shape_check() {
        assert!(is_task_id(&id_of(b"", TaskIdInputs::default())));
        assert!(!is_task_id("abc"));
        assert!(!is_task_id(&"G".repeat(64)));
    }
}
