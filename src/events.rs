//! The events on the stream (the wire contract) and the pure rules about them.
//!
//! Each stream entry carries `type`, `version`, `request_id`, `producer` and `data` (JSON); the
//! types here are the JSON of `data`, with the wire's field names.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Failure, Malformed};
use crate::keyspace::Service;

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: &str = "1";

/// Longest title accepted, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest comment accepted, in characters.
pub const MAX_CONTENT_CHARS: usize = 5000;

/// A comment's moderation status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
        }
    }

    /// Approved and rejected never change again.
    pub fn is_final(self) -> bool {
        self != Status::Pending
    }
}

/// `data` of `PostCreated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Post {
    pub id: Uuid,
    pub title: String,
}

/// `data` of `CommentCreated`, `CommentModerated` and `CommentUpdated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    pub id: Uuid,
    pub post_id: Uuid,
    pub content: String,
    pub status: Status,
}

/// The type of an event: the `type` field of its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    PostCreated,
    CommentCreated,
    CommentModerated,
    CommentUpdated,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::PostCreated,
        EventKind::CommentCreated,
        EventKind::CommentModerated,
        EventKind::CommentUpdated,
    ];

    /// Its name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::PostCreated => "PostCreated",
            EventKind::CommentCreated => "CommentCreated",
            EventKind::CommentModerated => "CommentModerated",
            EventKind::CommentUpdated => "CommentUpdated",
        }
    }

    /// The one service that produces it, on its own stream: a reader dead-letters an event of
    /// this kind found on another service's stream.
    pub const fn producer(self) -> Service {
        match self {
            EventKind::PostCreated => Service::Posts,
            EventKind::CommentCreated | EventKind::CommentUpdated => Service::Comments,
            EventKind::CommentModerated => Service::Moderation,
        }
    }

    /// The kind named `name`; `None` for a type this build does not know.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The Lua constant the step scripts publish it under (`POST_CREATED`, ...), set by
    /// [`EventKind::lua_constants`].
    pub fn lua_constant(self) -> &'static str {
        match self {
            EventKind::PostCreated => "POST_CREATED",
            EventKind::CommentCreated => "COMMENT_CREATED",
            EventKind::CommentModerated => "COMMENT_MODERATED",
            EventKind::CommentUpdated => "COMMENT_UPDATED",
        }
    }

    /// Lua that defines the constants of [`EventKind::lua_constant`].
    pub fn lua_constants() -> String {
        EventKind::ALL
            .iter()
            .map(|kind| format!("local {} = '{}'\n", kind.lua_constant(), kind.name()))
            .collect()
    }
}

/// One event, as read from the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    PostCreated(Post),
    CommentCreated(Comment),
    CommentModerated(Comment),
    CommentUpdated(Comment),
}

impl Event {
    /// Parses `data` for a known `type`. `Ok(None)` means a type this build does not know:
    /// a newer producer's event, to be skipped. `Err` is a malformed entry, with the reason.
    pub fn parse(kind: &str, data: &str) -> Result<Option<Event>, Malformed> {
        fn decode<T: serde::de::DeserializeOwned>(kind: &str, data: &str) -> Result<T, Malformed> {
            serde_json::from_str(data)
                .map_err(|error| Malformed(format!("{kind} data is invalid: {error}")))
        }
        let Some(known) = EventKind::parse(kind) else {
            return Ok(None);
        };
        let event = match known {
            EventKind::PostCreated => Event::PostCreated(decode(kind, data)?),
            EventKind::CommentCreated => Event::CommentCreated(decode(kind, data)?),
            EventKind::CommentModerated => Event::CommentModerated(decode(kind, data)?),
            EventKind::CommentUpdated => Event::CommentUpdated(decode(kind, data)?),
        };
        // Events obey the same limits as requests: an oversized or empty text is not ours.
        let checked = match &event {
            Event::PostCreated(post) => validate_title(&post.title).map(drop),
            Event::CommentCreated(comment)
            | Event::CommentModerated(comment)
            | Event::CommentUpdated(comment) => validate_content(&comment.content).map(drop),
        };
        checked.map_err(|failure| Malformed(format!("{kind} data is invalid: {failure}")))?;
        Ok(Some(event))
    }
}

/// The moderation rule: rejected when the content contains a banned word, ignoring case.
pub fn moderate(content: &str, banned_words: &[String]) -> Status {
    let content = content.to_lowercase();
    if banned_words
        .iter()
        .any(|word| content.contains(&word.to_lowercase()))
    {
        Status::Rejected
    } else {
        Status::Approved
    }
}

/// A title as stored: trimmed, not empty, at most [`MAX_TITLE_CHARS`] characters.
pub fn validate_title(title: &str) -> Result<String, Failure> {
    validate_text("title", title, MAX_TITLE_CHARS, &[])
}

/// A comment's content as stored: trimmed, not empty, at most [`MAX_CONTENT_CHARS`] characters.
pub fn validate_content(content: &str) -> Result<String, Failure> {
    validate_text("content", content, MAX_CONTENT_CHARS, &['\n', '\t'])
}

/// `allowed`: the control characters the text may hold (none in a title; newline and tab in
/// a comment); any other would act on a terminal that shows it.
fn validate_text(
    what: &str,
    text: &str,
    max_chars: usize,
    allowed: &[char],
) -> Result<String, Failure> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Failure::invalid(format!("the {what} is empty")));
    }
    if let Some(control) = text
        .chars()
        .find(|c| c.is_control() && !allowed.contains(c))
    {
        return Err(Failure::invalid(format!(
            "the {what} holds the control character U+{:04X}; it is not allowed",
            control as u32
        )));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(Failure::invalid(format!(
            "the {what} is {chars} characters long; at most {max_chars} are allowed"
        )));
    }
    Ok(text.to_owned())
}

/// A post or comment id given on the command line.
pub fn parse_id(what: &str, id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id.trim()).map_err(|_| Failure::invalid(format!("{what} {id:?} is not a UUID")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moderation_rejects_banned_words_in_any_case() {
        let banned = vec!["orange".to_owned()];
        assert_eq!(moderate("I like ORANGEs", &banned), Status::Rejected);
        assert_eq!(moderate("I like apples", &banned), Status::Approved);
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(validate_title("  Hi  ").unwrap(), "Hi");
        assert!(validate_title(" \t\n").is_err());
        assert!(validate_title(&"é".repeat(200)).is_ok());
        assert!(validate_title(&"é".repeat(201)).is_err());
        assert!(validate_content(&"x".repeat(5001)).is_err());
    }

    #[test]
    fn unknown_types_are_not_errors_but_bad_data_is() {
        assert_eq!(Event::parse("PostDeleted", "{}"), Ok(None));
        assert!(Event::parse("PostCreated", "not json").is_err());
        assert!(Event::parse("PostCreated", r#"{"id":"x","title":"t"}"#).is_err());
        let id = Uuid::now_v7();
        let huge = format!(r#"{{"id":"{id}","title":"{}"}}"#, "t".repeat(201));
        assert!(Event::parse("PostCreated", &huge).is_err());
        let id = Uuid::now_v7();
        let event = Event::parse(
            "PostCreated",
            &format!(r#"{{"id":"{id}","title":"t","extra":1}}"#),
        );
        assert_eq!(
            event,
            Ok(Some(Event::PostCreated(Post {
                id,
                title: "t".into()
            })))
        );
    }
}
