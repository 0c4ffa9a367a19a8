//! `blogctl comment create`.

use std::io::Read;
use std::time::Instant;

use clap::{Args, Subcommand};
use color_eyre::Result;
use uuid::Uuid;

use super::Poll;
use crate::context::Context;
use crate::error::{ExitCode, Failure};
use crate::events::{Comment, parse_id, validate_content};
use crate::output::print_line;
use crate::request::{Recipient, call, request_id};
use crate::services::comments::{self, CREATE_COMMENT, CreateComment};
use crate::services::query::{self, View};

#[derive(Debug, Subcommand)]
pub enum CommentCommand {
    /// Comment on a post and print the new comment's id; it starts "pending".
    #[command(
        after_help = r#"Example: echo "Nice post" | blogctl comment create --wait "$post_id" -"#
    )]
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The post to comment on.
    pub post_id: String,
    /// The comment: 1 to 5000 characters; `-` reads it from stdin.
    pub content: String,
    /// Return once the query view shows the final status, and print it after the id.
    #[arg(long)]
    pub wait: bool,
    /// Id for this request; a retry with the same id creates nothing new [default: a new UUID].
    #[arg(long)]
    pub request_id: Option<String>,
}

pub async fn run(context: &Context, command: &CommentCommand) -> Result<()> {
    match command {
        CommentCommand::Create(args) => create(context, args).await,
    }
}

async fn create(context: &Context, args: &CreateArgs) -> Result<()> {
    let started = Instant::now();
    let post_id = parse_id("post id", &args.post_id)?;
    let content = if args.content == "-" {
        read_stdin()?
    } else {
        args.content.clone()
    };
    let content = validate_content(&content)?;
    let request_id = request_id(args.request_id.as_deref())?;
    let mut connection = context.connect().await?;
    let partition = context.partitions(&mut connection).await?.of_post(&post_id);
    let mut comment: Comment = call(
        &mut connection,
        &context.keys,
        Recipient {
            service: comments::SERVICE,
            partition,
        },
        CREATE_COMMENT,
        &CreateComment { post_id, content },
        &request_id,
        context.timeout,
    )
    .await?;
    // On a `--wait` that runs out, the comment exists all the same: print it, then say so.
    let mut not_final = None;
    if args.wait {
        let view = View::new(&context.keys, partition);
        let mut poll = Poll::until(started + context.timeout);
        loop {
            match view
                .comment_status(&mut connection, post_id, comment.id)
                .await?
            {
                Some(status) if status.is_final() => {
                    comment.status = status;
                    break;
                }
                seen => {
                    if !poll.pause().await {
                        not_final =
                            Some(still_pending(comment.id, seen.is_some(), context.timeout));
                        break;
                    }
                }
            }
        }
    }
    if context.json {
        print_line(&serde_json::to_string(&comment)?)?;
    } else if args.wait && not_final.is_none() {
        print_line(&format!("{} {}", comment.id, comment.status.as_str()))?;
    } else {
        print_line(&comment.id.to_string())?;
    }
    match not_final {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

/// The timeout failure of `--wait`, naming the services the comment is waiting for.
fn still_pending(id: Uuid, in_view: bool, timeout: std::time::Duration) -> Failure {
    if !in_view {
        let what = format!("show comment {id} (it was created)");
        return Failure::service_timeout(query::NAME, &what, timeout);
    }
    Failure::new(
        ExitCode::ServiceTimeout,
        format!(
            "comment {id} was created but is still pending after {:.1}s; are the moderation, \
             comments and query services running? Start them with `blogctl serve moderation \
             comments query`",
            timeout.as_secs_f64()
        ),
    )
}

fn read_stdin() -> Result<String, Failure> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).map_err(|error| {
        Failure::invalid(format!("cannot read the content from stdin: {error}"))
    })?;
    String::from_utf8(bytes).map_err(|_| Failure::invalid("the content on stdin is not UTF-8"))
}
