//! The first pass of `blogctl import`: the whole file read and checked before anything is
//! written (see [`super`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::thread::JoinHandle;

use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use uuid::Uuid;

use super::{Routed, Verified};
use crate::bus::StreamId;
use crate::events::Event;
use crate::keyspace::{Partition, Partitions, Service};
use crate::ops::transfer::line::checks_out;
use crate::ops::transfer::{
    EventIn, FORMAT, Header, LineKind, VERSION, hex, parse_trailer, refuse_line,
};

/// Bytes of the file hashed at a time, on the hashing thread, while the lines are checked.
const HASH_CHUNK: usize = 1 << 20;

/// Reads the whole file and refuses it (exit code 2, naming the line) unless every line checks
/// out, the header is of this format and version, every event names a stream and partition of
/// the blog, and the trailer's counts and hash match what comes before it.
pub(super) fn verify(name: &str, file: &File) -> Result<Verified> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut verified = Verified::default();
    let mut created = HashSet::new();
    let hasher = Hasher::start();
    // The lines read since the last chunk went to the hasher.
    let mut chunk = Vec::with_capacity(HASH_CHUNK + (64 << 10));
    let mut number = 0;
    loop {
        let start = chunk.len();
        let read = reader
            .read_until(b'\n', &mut chunk)
            .wrap_err_with(|| format!("reading {name}"))?;
        if read == 0 {
            let why = "the file ends without its trailer: it was cut short";
            return Err(refuse_line(name, number.max(1), why).into());
        }
        number += 1;
        let line = std::str::from_utf8(&chunk[start..])
            .map_err(|_| refuse_line(name, number, "not UTF-8"))?;
        let Some(line) = line.strip_suffix('\n') else {
            return Err(refuse_line(name, number, "cut short (no newline at its end)").into());
        };
        if number == 1 && LineKind::of(line) != LineKind::Header {
            let why = "not the header of a `blogctl export` file";
            return Err(refuse_line(name, number, why).into());
        }
        if !checks_out(number, line) {
            let why = "its check does not match: the line was edited, or lines were added, \
                       removed or moved before it";
            return Err(refuse_line(name, number, why).into());
        }
        match (LineKind::of(line), number) {
            (LineKind::Header, 1) => verified.header = Some(parse_header(name, line)?),
            (LineKind::Event, 2..) => {
                let header = verified.header.as_ref().expect("line 1 is the header");
                let event = parse_event(name, number, line, header.partitions)?;
                note(&mut verified, &mut created, &event);
            }
            (LineKind::Trailer, 2..) => {
                let trailer = line.to_owned();
                // The hash covers every byte before the trailer.
                chunk.truncate(start);
                let hash = hasher.finish(chunk);
                check_trailer(name, number, &trailer, &verified, hash)?;
                refuse_lines_after(name, number, &mut reader)?;
                break;
            }
            _ => {
                let why = if number == 1 {
                    "not the header of a `blogctl export` file"
                } else {
                    "not an event or the trailer"
                };
                return Err(refuse_line(name, number, why).into());
            }
        }
        if chunk.len() >= HASH_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(HASH_CHUNK + (64 << 10)));
            hasher.add(full);
        }
    }
    verified.awaiting_moderation = created.difference(&verified.moderated).count() as u64;
    Ok(verified)
}

/// The SHA-256 of the file, taken on a thread of its own from the chunks it is given.
struct Hasher {
    chunks: Option<mpsc::SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<ring::digest::Digest>>,
}

impl Hasher {
    fn start() -> Hasher {
        // Two chunks waiting at most: the file is read no further ahead of the hash.
        let (chunks, to_hash) = mpsc::sync_channel::<Vec<u8>>(2);
        let thread = std::thread::spawn(move || {
            let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
            for chunk in to_hash {
                hash.update(&chunk);
            }
            hash.finish()
        });
        Hasher {
            chunks: Some(chunks),
            thread: Some(thread),
        }
    }

    fn add(&self, chunk: Vec<u8>) {
        if let Some(chunks) = &self.chunks {
            // It fails only if the thread died, which `finish` reports.
            let _ = chunks.send(chunk);
        }
    }

    /// The hash of every chunk, `last` included.
    fn finish(mut self, last: Vec<u8>) -> ring::digest::Digest {
        self.add(last);
        self.chunks = None;
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("hashing does not panic")
    }
}

fn parse_header(name: &str, line: &str) -> Result<Header> {
    let header: Header = serde_json::from_str(line)
        .map_err(|error| refuse_line(name, 1, format!("not a header: {error}")))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(refuse_line(
            name,
            1,
            format!(
                "format {:?} version {}: this blogctl reads {FORMAT} version {VERSION}",
                header.format, header.version
            ),
        )
        .into());
    }
    if Partitions::new(header.partitions).is_none() {
        let why = format!("{} partitions is not a partition count", header.partitions);
        return Err(refuse_line(name, 1, why).into());
    }
    Ok(header)
}

/// An event line, checked: a stream of the blog, a partition of the export, an entry id.
pub(super) fn parse_event<'a>(
    name: &str,
    number: u64,
    line: &'a str,
    partitions: u32,
) -> Result<Routed<'a>> {
    let event = EventIn::parse(line)
        .map_err(|error| refuse_line(name, number, format!("not an event: {error}")))?;
    let Some(producer) = Service::PRODUCERS
        .into_iter()
        .find(|producer| producer.name() == event.stream)
    else {
        let why = format!("{:?} is not a stream of the blog", event.stream);
        return Err(refuse_line(name, number, why).into());
    };
    if event.partition >= partitions {
        let why = format!(
            "partition {} is not one of the export's {partitions}",
            event.partition
        );
        return Err(refuse_line(name, number, why).into());
    }
    let Some(id) = StreamId::parse(&event.id, false) else {
        let why = format!("{:?} is not a stream entry id", event.id);
        return Err(refuse_line(name, number, why).into());
    };
    Ok(Routed::new(producer, Partition(event.partition), id, event))
}

/// Notes what the services did with a comment: created, moderated, updated.
fn note(verified: &mut Verified, created: &mut HashSet<Uuid>, event: &Routed) {
    verified.events += 1;
    match (&event.event, event.producer) {
        (Some(Event::CommentCreated(comment)), Service::Comments) => {
            created.insert(comment.id);
        }
        (Some(Event::CommentModerated(comment)), Service::Moderation) => {
            verified.moderated.insert(comment.id);
        }
        (Some(Event::CommentUpdated(comment)), Service::Comments) => {
            verified.updated.insert(comment.id);
        }
        _ => {}
    }
}

fn check_trailer(
    name: &str,
    number: u64,
    line: &str,
    verified: &Verified,
    hash: ring::digest::Digest,
) -> Result<()> {
    let trailer = parse_trailer(line).ok_or_else(|| refuse_line(name, number, "not a trailer"))?;
    if trailer.events != verified.events {
        let why = format!(
            "the trailer counts {} events and the file holds {}: lines were removed or added",
            trailer.events, verified.events
        );
        return Err(refuse_line(name, number, why).into());
    }
    if trailer.sha256 != hex(hash.as_ref()) {
        let why = "the SHA-256 of the lines before the trailer does not match it: the file \
                   was edited";
        return Err(refuse_line(name, number, why).into());
    }
    Ok(())
}

fn refuse_lines_after(name: &str, number: u64, reader: &mut impl BufRead) -> Result<()> {
    let mut rest = String::new();
    reader.read_line(&mut rest)?;
    if !rest.trim().is_empty() {
        let why = "more follows the trailer: two files joined, or lines added";
        return Err(refuse_line(name, number + 1, why).into());
    }
    Ok(())
}
