//! `blogctl post create|list|show`.

use std::io::IsTerminal;
use std::time::Instant;

use clap::{Args, Subcommand};
use color_eyre::Result;
use uuid::Uuid;

use super::Poll;
use crate::context::Context;
use crate::error::Failure;
use crate::events::{Post, parse_id, validate_title};
use crate::output::one_line;
use crate::output::{print_line, print_text};
use crate::request::{Recipient, call, request_id};
use crate::services::posts::{self, CREATE_POST, CreatePost};
use crate::services::query::{self, PostView, View, Views};

#[derive(Debug, Subcommand)]
pub enum PostCommand {
    /// Create a post and print its id.
    #[command(after_help = r#"Example: id=$(blogctl post create "Hello world")"#)]
    Create(CreateArgs),
    /// List posts, oldest first, with their comments and their status.
    #[command(after_help = r#"Example: blogctl post list --json | jq '.[].title'"#)]
    List(ListArgs),
    /// Show one post with its comments.
    #[command(after_help = r#"Example: blogctl post show "$id""#)]
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The title: 1 to 200 characters.
    pub title: String,
    /// Return only once the post is in the query view.
    #[arg(long)]
    pub wait: bool,
    /// Id for this request; a retry with the same id creates nothing new [default: a new UUID].
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `--limit`: a number of posts, at least 1.
fn parse_limit(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("--limit must be at least 1".to_owned()),
        Ok(limit) => Ok(limit),
        Err(_) => Err(format!(
            "--limit must be a whole number of posts, not {text:?}"
        )),
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show at most this many posts (at least 1).
    #[arg(long, value_parser = parse_limit)]
    pub limit: Option<u64>,
    /// Start after this post id (the last one of the previous page).
    #[arg(long)]
    pub after: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The post's id.
    pub post_id: String,
}

pub async fn run(context: &Context, command: &PostCommand) -> Result<()> {
    match command {
        PostCommand::Create(args) => create(context, args).await,
        PostCommand::List(args) => list(context, args).await,
        PostCommand::Show(args) => show(context, args).await,
    }
}

async fn create(context: &Context, args: &CreateArgs) -> Result<()> {
    let started = Instant::now();
    let title = validate_title(&args.title)?;
    let request_id = request_id(args.request_id.as_deref())?;
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    let post: Post = call(
        &mut connection,
        &context.keys,
        Recipient {
            service: posts::SERVICE,
            partition: partitions.of_request(&request_id),
        },
        CREATE_POST,
        &CreatePost { title },
        &request_id,
        context.timeout,
    )
    .await?;
    // On a `--wait` that runs out, the post exists all the same: print it, then say so.
    let mut not_shown = None;
    if args.wait {
        let view = View::new(&context.keys, partitions.of_post(&post.id));
        let mut poll = Poll::until(started + context.timeout);
        while view.get(&mut connection, post.id).await?.is_none() {
            if !poll.pause().await {
                let what = format!("show post {} (it was created)", post.id);
                not_shown = Some(Failure::service_timeout(
                    query::NAME,
                    &what,
                    context.timeout,
                ));
                break;
            }
        }
    }
    if context.json {
        print_line(&serde_json::to_string(&post)?)?;
    } else {
        print_line(&post.id.to_string())?;
    }
    match not_shown {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

async fn list(context: &Context, args: &ListArgs) -> Result<()> {
    let after = args
        .after
        .as_deref()
        .map(|id| parse_id("--after", id))
        .transpose()?;
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    let views = Views::new(&context.keys, partitions);
    let Some(limit) = args.limit.map(|limit| limit as usize) else {
        return list_all(context, &mut connection, &views, after).await;
    };
    // One more than the page: whether a next page exists.
    let mut merged = views.merged(after, limit + 1);
    let mut posts = Vec::new();
    while posts.len() <= limit {
        match merged.next(&mut connection).await? {
            Some(post) => posts.push(post),
            None => break,
        }
    }
    let more = posts.len() > limit;
    posts.truncate(limit);
    // stdout carries results only: an empty blog prints nothing there.
    if context.json {
        print_line(&serde_json::to_string(&posts)?)?;
    } else {
        for post in &posts {
            print_post(post)?;
        }
    }
    if posts.is_empty() && !context.json && std::io::stderr().is_terminal() {
        eprintln!("no posts yet");
    }
    if let (true, Some(last)) = (more, posts.last()) {
        eprintln!(
            "more posts: the next page is `blogctl post list --limit {limit} --after {}`",
            last.id
        );
    }
    Ok(())
}

/// Posts read per script and partition when listing without `--limit`: each read is short for
/// Redis, and the client holds one page per partition at a time, however big the blog.
const LIST_PAGE: usize = 500;

/// Every post after `after`, read a page at a time and printed as it comes (one JSON array,
/// written piece by piece, with `--json`).
async fn list_all(
    context: &Context,
    connection: &mut crate::connection::Connection,
    views: &Views,
    after: Option<Uuid>,
) -> Result<()> {
    let mut merged = views.merged(after, LIST_PAGE);
    let mut printed = 0usize;
    while let Some(post) = merged.next(connection).await? {
        if context.json {
            let separator = if printed == 0 { "[" } else { "," };
            print_text(&format!("{separator}{}", serde_json::to_string(&post)?))?;
        } else {
            print_post(&post)?;
        }
        printed += 1;
    }
    if context.json {
        print_line(if printed == 0 { "[]" } else { "]" })?;
    } else if printed == 0 && std::io::stderr().is_terminal() {
        eprintln!("no posts yet");
    }
    Ok(())
}

async fn show(context: &Context, args: &ShowArgs) -> Result<()> {
    let id: Uuid = parse_id("post id", &args.post_id)?;
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    let view = View::new(&context.keys, partitions.of_post(&id));
    let Some(post) = view.get(&mut connection, id).await? else {
        return Err(Failure::not_found(format!("post {id} is not in the query view")).into());
    };
    if context.json {
        print_line(&serde_json::to_string(&post)?)?;
    } else {
        print_post(&post)?;
    }
    Ok(())
}

/// The human form: the post on one line, then one indented line per comment.
fn print_post(post: &PostView) -> std::io::Result<()> {
    print_line(&format!("{}  {}", post.id, one_line(&post.title)))?;
    for comment in &post.comments {
        print_line(&format!(
            "    {:<8}  {}  {}",
            comment.status.as_str(),
            comment.id,
            one_line(&comment.content)
        ))?;
    }
    Ok(())
}
