//! Dropping a generation, a page of keys at a time: one that was live through its indexes, one a
//! rebuild filled and never switched to (the view's) by scanning for its keys.

use std::sync::LazyLock;

use color_eyre::Result;
use redis::{AsyncCommands, Script};

use super::Target;
use crate::connection::Connection;
use crate::keyspace::{Generation, generation_lua};

/// Posts or comments whose keys are deleted (or keys scanned) per round trip when a generation
/// is dropped.
const DROP_PAGE: usize = 1000;

/// Deletes up to ARGV[2] comments of the comments generation at base ARGV[1], popping their
/// ids from its index in the same step; returns how many it popped.
static DROP_COMMENTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        generation_lua(),
        include_str!("drop_comments.lua")
    ))
});

/// Deletes every key of a generation that was live, a page at a time, through its indexes: the
/// view's list of posts, or the comments state's list of comment ids (which
/// [`write`](super::apply::write) completes in a generation an earlier version wrote). The
/// view's comments on a post it never listed (which only a hand-written event makes in a live
/// generation) are left behind.
pub(super) async fn drop_generation(
    connection: &mut Connection,
    target: Target,
    generation: &Generation,
) -> Result<()> {
    match target {
        Target::Query => drop_view(connection, generation).await,
        Target::Comments => drop_comments(connection, generation).await,
    }
}

/// Deletes a generation of the query view, its keys found through its list of posts.
async fn drop_view(connection: &mut Connection, generation: &Generation) -> Result<()> {
    let posts = generation.view_posts();
    let mut start = 0;
    loop {
        let ids: Vec<String> = connection
            .zrange(&posts, start, start + DROP_PAGE as isize - 1)
            .await?;
        if ids.is_empty() {
            break;
        }
        let doomed: Vec<String> = ids
            .iter()
            .flat_map(|id| [generation.view_post(id), generation.view_comments(id)])
            .collect();
        let _: () = connection.unlink(&doomed).await?;
        start += ids.len() as isize;
    }
    let _: () = connection.unlink(&posts).await?;
    Ok(())
}

/// Deletes a generation of the comments state: its comments, popped from its index a page at
/// a time, then the posts it knew.
async fn drop_comments(connection: &mut Connection, generation: &Generation) -> Result<()> {
    loop {
        // The index is named as a key: a Cluster routes the script to the node of its slot.
        let dropped: usize = DROP_COMMENTS
            .key(generation.comment_ids())
            .arg(generation.base())
            .arg(DROP_PAGE)
            .invoke_async(connection)
            .await?;
        if dropped < DROP_PAGE {
            break;
        }
    }
    let _: () = connection
        .unlink(&[generation.known_posts(), generation.comment_ids()])
        .await?;
    Ok(())
}

/// Deletes every key of a generation a rebuild filled and never switched to: its own, when it
/// fails, or one a rebuild that died left under a number used again. The comments state's goes
/// through its index, like a live one: every batch lists the comments it writes. The view's is
/// scanned for: its list of posts would miss the comments of a post whose `PostCreated` the
/// rebuild had not applied yet (a post created while it ran, after it had read the posts'
/// stream and before it read the comments').
pub(super) async fn drop_unswitched(
    connection: &mut Connection,
    target: Target,
    generation: &Generation,
) -> Result<()> {
    match target {
        Target::Query => scan_and_drop(connection, generation).await,
        Target::Comments => drop_comments(connection, generation).await,
    }
}

/// Deletes every key of a generation, scanning the keyspace of the Redis (on a Cluster, the
/// master) holding its slot for them.
async fn scan_and_drop(connection: &mut Connection, generation: &Generation) -> Result<()> {
    let pattern = format!(
        "{}*",
        generation
            .base()
            .replace('[', "\\[")
            .replace('?', "\\?")
            .replace('*', "\\*")
    );
    let mut cursor: u64 = 0;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(DROP_PAGE);
        // On a Cluster, every page from the master holding the generation's slot.
        let (next, found): (u64, Vec<String>) =
            connection.query_at(generation.base(), scan).await?;
        if !found.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&found)
                .query_async(connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
